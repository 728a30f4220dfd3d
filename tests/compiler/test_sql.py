"""The relational export of single nodes is executable: the SQL, run by DuckDB on tiny
tensors, equals torch (the whole incremental plan: tests/runtime/test_relational.py)."""

from __future__ import annotations

import math

import duckdb
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler import sql
from compiler.importer import export, import_model
from compiler.types import Size2


class _Rows:
    def __init__(self, rows):
        self.rows = rows


def execute(sql_text: str, tables: dict[str, list[dict]]) -> _Rows:
    """Run ``sql_text`` in DuckDB over the tables (lists of rows)."""
    db = duckdb.connect()
    for name, rows in tables.items():
        db.register(name, pa.Table.from_pylist(rows))
    return _Rows(db.execute(sql_text).fetchall())


def _relation_a(x: torch.Tensor) -> list[dict]:
    c, h, w = x.shape
    return [
        {"c": i, "y": y, "x": xx, "v": float(x[i, y, xx])}
        for i in range(c)
        for y in range(h)
        for xx in range(w)
    ]


def _grid(h: int, w: int) -> list[dict]:
    return [{"y": y, "x": x} for y in range(h) for x in range(w)]


def _to_tensor(rows, shape) -> torch.Tensor:
    out = torch.full(shape, math.nan)
    for c, y, x, v in rows:
        out[c, y, x] = v
    return out


def _node(module: nn.Module, shape: tuple[int, int, int]):
    model = nn.Sequential(module, nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, *shape))
    plan = import_model(export(model.eval(), shape), shape, Size2(1, 1), (0.0,) * shape[0])
    return list(plan)[2]  # after Input and Occlude


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(4, 4, (2, 3), stride=2, dilation=(1, 2), groups=2, bias=False, padding=(1, 0)),
    ],
    ids=["3x3", "grouped-strided-dilated"],
)
def test_convolution(conv: nn.Conv2d) -> None:
    x = torch.randn(conv.in_channels, 6, 7)
    expected = conv(x[None])[0].detach()
    node = _node(conv, tuple(x.shape))
    group_in = conv.in_channels // conv.groups
    group_out = conv.out_channels // conv.groups
    k = [
        {
            "n": n,
            "c": (n // group_out) * group_in + c,
            "ky": ky,
            "kx": kx,
            "v": float(conv.weight[n, c, ky, kx].detach()),
        }
        for n in range(conv.out_channels)
        for c in range(group_in)
        for ky in range(conv.kernel_size[0])
        for kx in range(conv.kernel_size[1])
    ]
    tables = {"A": _relation_a(x), "K": k, "G": _grid(*expected.shape[1:])}
    if conv.bias is not None:
        bias = conv.bias.detach()
        tables["B"] = [{"n": n, "v": float(bias[n])} for n in range(conv.out_channels)]
    result = execute(sql.node_sql(node), tables=tables)
    assert torch.allclose(_to_tensor(result.rows, expected.shape), expected, atol=1e-5)


@pytest.mark.parametrize(
    "pool",
    [
        nn.MaxPool2d(3, 2, 1, ceil_mode=True),
        nn.AvgPool2d(2, 2),
        nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
    ],
    ids=["max-ceil", "avg", "avg-ceil-exclude-pad"],
)
def test_pooling(pool: nn.Module) -> None:
    x = torch.randn(2, 7, 6)
    expected = pool(x[None])[0]
    node = _node(pool, tuple(x.shape))
    kernel = node.op.window.kernel
    tables = {
        "A": _relation_a(x),
        "G": _grid(*expected.shape[1:]),
        "W": [{"ky": a, "kx": b} for a in range(kernel.h) for b in range(kernel.w)],
    }
    if node.op.constant_divisor is None:
        ones = torch.ones(1, 1, *x.shape[1:])
        counts = F.avg_pool2d(ones, 3, 2, 1, True, False, divisor_override=1)
        divisor = counts / F.avg_pool2d(ones, 3, 2, 1, True, False)
        tables["D"] = [
            {"y": y, "x": xx, "v": float(divisor[0, 0, y, xx].round())}
            for y in range(divisor.shape[2])
            for xx in range(divisor.shape[3])
        ]
    result = execute(sql.node_sql(node), tables=tables)
    assert torch.allclose(_to_tensor(result.rows, expected.shape), expected, atol=1e-6)


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.2)])
def test_elementwise(activation: nn.Module) -> None:
    x = torch.randn(2, 4, 5) * 5
    node = _node(activation, tuple(x.shape))
    result = execute(sql.node_sql(node), tables={"A": _relation_a(x)})
    assert torch.allclose(_to_tensor(result.rows, x.shape), activation(x), atol=1e-6)


def test_batch_norm_as_a_join_with_its_affine_relation() -> None:
    bn = nn.BatchNorm2d(3, eps=1e-3).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 4, 4)
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    shift = (bn.bias - bn.running_mean * scale).detach()
    node = _node(bn, tuple(x.shape))
    tables = {
        "A": _relation_a(x),
        "S": [{"c": c, "scale": float(scale[c]), "shift": float(shift[c])} for c in range(3)],
    }
    result = execute(sql.node_sql(node), tables=tables)
    assert torch.allclose(_to_tensor(result.rows, x.shape), bn(x[None])[0], atol=1e-5)
