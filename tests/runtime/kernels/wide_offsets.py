"""Run by ``test_limits`` in a child process (a wrapped 32-bit offset reads outside the buffer,
which can kill the process rather than fail an assertion): every kernel in Triton's
interpreter, whose integer arithmetic has the compiled kernels' widths, on a view of three
images and a patch of three queries laid out 2³⁰ + 16 values apart — so the third image's and
the third query's base offsets are above 2³¹ while every size and stride still fits 32 bits,
as in a batch the planner allows. Each result is compared with the torch twin; prints one
line per kernel and exits non-zero on a mismatch. The buffers are virtual memory: only the
touched pages are ever allocated."""

from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from compiler.ir import Activation  # noqa: E402
from compiler.types import Size2  # noqa: E402
from runtime.kernels import elementwise, gather_combine, gather_conv2d, gather_pool2d  # noqa: E402
from runtime.kernels.epilogue import ACTIVATION_CODES, Epilogue  # noqa: E402
from runtime.values import Patch, gather  # noqa: E402

APART = 2**30 + 16  # values between consecutive images / queries
C, H, W, PH, PW = 4, 6, 6, 3, 3


def spread(n: int, c: int, h: int, w: int) -> torch.Tensor:
    """``[n, c, h, w]`` channels-last cells, each image ``APART`` values after the last."""
    tensor = torch.empty_strided((n, c, h, w), (APART, 1, w * c, c))
    for k in range(n):
        tensor[k].normal_()
    return tensor


def compact(tensor: torch.Tensor) -> torch.Tensor:
    return torch.stack([tensor[k] for k in range(len(tensor))])


def main() -> int:
    torch.manual_seed(0)
    view, patch = spread(3, C, H, W), spread(3, C, PH, PW)
    image = torch.tensor([0, 1, 2])
    py, px = torch.tensor([1, 2, 3]), torch.tensor([0, 3, 2])
    ry, rx = py - 1, px - 1
    cells = (
        compact(view),
        Patch(compact(patch), py, px),
        image,
        (ry, rx),
        Size2(5, 5),
        Size2(H, W),
    )
    window, padded = gather(*cells), gather(*cells, fill=float("-inf"))
    failures = 0

    def compare(name: str, got: torch.Tensor, expected: torch.Tensor) -> None:
        nonlocal failures
        error = (got - expected).abs().max().item()
        ok = error < 1e-4
        failures += not ok
        print(f"{name}: max error {error:.2e} {'ok' if ok else 'WRONG'}", flush=True)

    queries = (view, patch, image, ry, rx, py, px)
    weight = torch.randn(5, C, 3, 3)
    got = gather_conv2d.gather_conv2d(*queries, weight, None, (1, 1), (1, 1), 1, (3, 3))
    compare("gather_conv2d (GEMM)", got, F.conv2d(window, weight))
    depthwise = torch.randn(2 * C, 1, 3, 3)
    got = gather_conv2d.gather_conv2d(*queries, depthwise, None, (1, 1), (1, 1), C, (3, 3))
    compare("gather_conv2d (depthwise)", got, F.conv2d(window, depthwise, groups=C))
    got = gather_pool2d.gather_pool2d(*queries, (3, 3), (1, 1), (1, 1), (3, 3), is_max=True)
    compare("gather_pool2d (max)", got, F.max_pool2d(padded, 3, 1))
    operand = (view, patch, py, px)
    got = gather_combine.gather_combine([operand], image, ry, rx, (5, 5))
    compare("gather_combine", got, window)
    relu = Epilogue(act=ACTIVATION_CODES[Activation.RELU])
    compare("elementwise", elementwise.elementwise(patch, relu), compact(patch).relu())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
