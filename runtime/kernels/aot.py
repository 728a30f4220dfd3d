"""Ahead-of-time compile check: every kernel specialization a plan launches, compiled for a GPU
target on a machine without one, with what the hardware would see — registers, spills, shared
memory, and whether ``tl.dot`` became tensor-core instructions.

Launches come from running the plan's executor for one batch under
``runtime.kernels.launch.capture()`` on CPU tensors: the arguments are the runtime's own (the
reference runs the steps no Triton kernel covers; the Triton steps are recorded, not run).
Each launch is specialized the way Triton's JIT would specialize it (its binder, made for the
target's backend: integer widths, ``1``-constants, 16-byte divisibility) and compiled with
``triton.compile`` for every autotune config; ``ptxas -v`` (Triton's own invocation, its log
kept) reports registers and spills. Flags that differ on a GPU (``IEEE``: TF32 or exact fp32
products) are set as a GPU launch would set them.

Needs a Triton that is not in interpreter mode (``TRITON_INTERPRET`` unset); the interpreter's
kernels are not compilable functions.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from runtime.kernels.launch import Launch, capture


@dataclass(frozen=True)
class Target:
    """A GPU to compile for: its name, compute capability and shared memory per block."""

    name: str
    capability: int
    shared_limit: int  # bytes of shared memory one block may use (opt-in maximum)
    tensor_core_ops: tuple[str, ...]  # PTX instructions tl.dot becomes on tensor cores


SM90 = Target("sm_90", 90, 232_448, ("wgmma.mma_async", "mma.sync"))  # H100/H200: 227 KiB
SM80 = Target("sm_80", 80, 166_912, ("mma.sync",))  # A100: 163 KiB per block
TARGETS = (SM90, SM80)


@dataclass(frozen=True)
class Specialization:
    """One compiled variant of a kernel: what Triton's JIT keys its cache on, plus a config."""

    kernel: str
    dtype: str
    flags: tuple[tuple[str, Any], ...]
    signature: tuple[tuple[str, str], ...]
    config: str

    def describe(self) -> str:
        flags = " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in self.flags)
        return f"{self.kernel} {self.dtype} {flags} [{self.config}]"


@dataclass
class Report:
    """What compiling one specialization for one target gave."""

    kernel: str
    dtype: str
    flags: dict[str, Any]
    config: str
    target: str
    ok: bool
    error: str = ""
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    shared: int = 0
    shared_limit: int = 0
    uses_dot: bool = False
    tensor_cores: bool = False
    tensor_cores_expected: bool = False
    launches: int = 1  # captured launches that share this specialization
    models: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Why this specialization would misbehave on the target (empty: none)."""
        found = []
        if not self.ok:
            found.append(f"does not compile: {self.error}")
            return found
        if self.spill_stores or self.spill_loads:
            found.append(f"spills {self.spill_stores} B stored / {self.spill_loads} B loaded")
        if self.shared > self.shared_limit:
            found.append(f"needs {self.shared} B of shared memory (limit {self.shared_limit})")
        if self.tensor_cores_expected and not self.tensor_cores:
            found.append("tl.dot did not become tensor-core instructions")
        return found

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "problems": self.problems}


def captured_launches(
    physical: Any,
    weights: Any,
    origins: Any,
    positions: Any,
    images: torch.Tensor,
    batch: int,
) -> list[Launch]:
    """The Triton launches one batch of ``batch`` queries of a plan makes (on CPU tensors:
    the reference runs the other steps, the Triton steps are recorded)."""
    from compiler.types import Score
    from runtime.backends import TritonRunner
    from runtime.executor import Executor, materialize
    from runtime.measure import ConvChoice

    runner = TritonRunner(ConvChoice.TRITON)
    with torch.no_grad():
        views = materialize(physical, images, weights)
        executor = Executor(physical, views, weights, origins, positions, runner)
        targets = torch.zeros(len(images), 1, dtype=torch.int64)
        chosen = torch.arange(min(batch, len(positions)))
        with capture() as launches:
            executor.run(targets, Score.LOGIT, batch, None, chosen)
    return launches


def gpu_flags(launch: Launch) -> list[dict[str, Any]]:
    """The flag sets this launch has on a GPU: fp32 convolutions run TF32 products by default
    (``IEEE=False``, torch's ``allow_tf32``) or exact ones when TF32 is off (``IEEE=True``);
    half precision always runs native products."""
    if "IEEE" not in launch.flags:
        return [dict(launch.flags)]
    exact = [False, True] if _dtype(launch) == "fp32" else [False]
    return [{**launch.flags, "IEEE": ieee} for ieee in exact]


def _dtype(launch: Launch) -> str:
    tensor = next(a for a in launch.args if isinstance(a, torch.Tensor) and a.is_floating_point())
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[tensor.dtype]


def _config_name(config: Any) -> str:
    blocks = "×".join(str(v) for v in config.kwargs.values())
    return f"{blocks} w{config.num_warps} s{config.num_stages}"


@functools.cache
def _backend(target: Target) -> tuple[Any, Any]:
    """The target's GPUTarget and Triton backend (made once per target)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    gpu = GPUTarget("cuda", target.capability, 32)
    return gpu, make_backend(gpu)


def _specialize(
    launch: Launch, flags: dict[str, Any], config: Any, target: Target
) -> tuple[Any, ...]:
    """``(source, options, signature)`` exactly as Triton's JIT would build them on ``target``."""
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    _, backend = _backend(target)
    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = {**flags, **config.all_kwargs()}
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, kwargs, bound, specialization, options
    )
    return ASTSource(kernel, signature, constexprs, attrs), options, signature


_REGISTERS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_for(launch: Launch, flags: dict[str, Any], config: Any, target: Target) -> Report:
    """Compile one specialization for ``target``; never raises for a kernel that fails."""
    import triton
    from triton import knobs

    dtype = _dtype(launch)
    report = Report(
        launch.name,
        dtype,
        dict(flags),
        _config_name(config),
        target.name,
        ok=False,
        shared_limit=target.shared_limit,
        uses_dot="tl.dot(" in launch.kernel.src,
    )
    report.tensor_cores_expected = report.uses_dot and not flags.get("IEEE", False)
    log = io.StringIO()
    try:
        source, options, _ = _specialize(launch, flags, config, target)
        gpu, _ = _backend(target)
        with (
            knobs.compilation.scope(),
            knobs.nvidia.scope(),
            contextlib.redirect_stdout(log),
        ):
            knobs.compilation.always_compile = True  # a cached kernel would skip ptxas
            knobs.nvidia.dump_ptxas_log = True
            compiled = triton.compile(source, target=gpu, options=options.__dict__)
    except Exception as error:  # a compile failure is the finding, not a crash of the check
        report.error = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
        return report
    text = log.getvalue()
    registers = _REGISTERS.findall(text)
    spills = _SPILLS.findall(text)
    report.ok = True
    report.registers = int(registers[-1]) if registers else 0
    report.spill_stores = sum(int(s) for s, _ in spills)
    report.spill_loads = sum(int(s) for _, s in spills)
    report.shared = int(compiled.metadata.shared)
    report.tensor_cores = any(op in compiled.asm["ptx"] for op in target.tensor_core_ops)
    return report


@dataclass
class Variant:
    """A specialization to compile: one launch that has it, its GPU flags and config, and how
    many captured launches share it."""

    key: Specialization
    launch: Launch
    flags: dict[str, Any]
    config: Any
    count: int = 0


def specializations(launches: Iterable[Launch], configs: str = "all") -> list[Variant]:
    """Distinct specializations: one per JIT cache entry per autotune config
    (``configs="first"``: only each kernel's first config)."""
    found: dict[Specialization, Variant] = {}
    for launch in launches:
        for flags in gpu_flags(launch):
            chosen = launch.configs if configs == "all" else launch.configs[:1]
            for config in chosen:
                _, _, signature = _specialize(launch, flags, config, SM90)
                key = Specialization(
                    launch.name,
                    _dtype(launch),
                    tuple(sorted(flags.items())),
                    tuple(sorted((str(k), str(v)) for k, v in signature.items())),
                    _config_name(config),
                )
                found.setdefault(key, Variant(key, launch, flags, config)).count += 1
    return list(found.values())
