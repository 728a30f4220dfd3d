"""Memory: the budget for per-query buffers (the batch size follows from it), what a run needs
— the clean forward's views plus one batch's buffers — against what the device has left, and
allocation failures turned into a smaller batch or a ``KryptonError`` that says what to change.
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Callable
from typing import TypeVar

import torch

from compiler.errors import KryptonError
from compiler.physical import PhysicalPlan

log = logging.getLogger(__name__)

T = TypeVar("T")

# On the CPU a batch runs fastest while its buffers stay near the size of the caches: on the
# project's 2-core machine EfficientNet-Lite0 ran a 729-query heatmap 2.6× faster at 32 queries
# per batch (64 MiB of buffers) than in one batch, and VGG16 and ResNet18 were flat from 32 to
# 64 queries per batch. Parallelism gains nothing past that on a CPU.
CPU_BUDGET = 64 << 20


class OutOfMemoryError(KryptonError):
    """A run does not fit the device's memory even one query at a time."""


def default_budget(device: torch.device) -> int:
    """Bytes for per-query buffers: half the free memory of a CUDA device; ``CPU_BUDGET`` on
    the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free // 2
    return CPU_BUDGET


def available(device: torch.device) -> int | None:
    """Bytes the process can still allocate on ``device`` (None: unknown). On the CPU the
    least of the system's available memory and what an address-space limit
    (``RLIMIT_AS``, e.g. ``ulimit -v``) leaves."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    limits = [_meminfo("MemAvailable")]
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        used = _status("VmSize")
        limits.append(max(0, soft - used) if used is not None else soft)
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def view_bytes(physical: PhysicalPlan, images: int, element_size: int) -> int:
    """Bytes of the views a run keeps for ``images`` images."""
    values = sum(node.schema.numel for node in physical.nodes if node.name in physical.views)
    return values * images * element_size


def check_fits(
    physical: PhysicalPlan, images: int, element_size: int, device: torch.device
) -> None:
    """Before the clean forward: its views and one query's buffers fit what ``device`` has
    left, else an ``OutOfMemoryError`` with the bytes needed, available and what to change."""
    views = view_bytes(physical, images, element_size)
    per_query = _per_query(physical, element_size)
    free = available(device)
    if free is not None and views + per_query > free:
        raise OutOfMemoryError(
            f"this run needs {_size(views + per_query)} of {device.type} memory — "
            f"{_size(views)} for the clean forward's views of {images} image(s) and "
            f"{_size(per_query)} for one query's buffers — but {_size(free)} is available: "
            "explain fewer images per call, use a smaller image or patch, a lower precision "
            "(precision='bf16'), or a device with more memory"
        )


def batch_for(physical: PhysicalPlan, element_size: int, device: torch.device) -> int:
    """After the clean forward: the plan's batch size, smaller when its buffers would not fit
    what the views left on ``device``."""
    planned = physical.batching.batch_size
    free = available(device)
    if free is None:
        return planned
    fits = max(1, free // _per_query(physical, element_size))
    if fits < planned:
        log.info("batch size %d → %d: %s of memory left for batch buffers", planned, fits,
                 _size(free))  # fmt: skip
    return min(planned, fits)


def _per_query(physical: PhysicalPlan, element_size: int) -> int:
    """One query's buffers at their peak (planned at 4 bytes a value)."""
    return max(1, physical.batching.bytes_per_query * element_size // 4)


def is_allocation_failure(error: BaseException) -> bool:
    """An allocator that could not allocate: CUDA's ``OutOfMemoryError``, the CPU allocator's
    ``RuntimeError`` or Python's ``MemoryError``."""
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "not enough memory" in text or "out of memory" in text
    )


def allocating(what: str, needed: int, device: torch.device, run: Callable[[], T]) -> T:
    """``run()``; an allocation failure becomes an ``OutOfMemoryError`` naming ``what`` and
    the bytes it needed."""
    try:
        return run()
    except Exception as error:
        if not is_allocation_failure(error):
            raise
        free = available(device)
        left = f", {_size(free)} available" if free is not None else ""
        raise OutOfMemoryError(
            f"out of {device.type} memory while {what} (needs about {_size(needed)}{left}): "
            "explain fewer images per call, use a smaller image or patch, a lower precision, or "
            "a device with more memory"
        ) from None


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _status(key: str) -> int | None:
    try:
        with open(f"/proc/{os.getpid()}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
