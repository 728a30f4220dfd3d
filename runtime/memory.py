"""How much memory a run may use for per-query buffers."""

from __future__ import annotations

import os

import torch

CPU_BUDGET_CAP = 2 << 30  # beyond ~2 GiB of buffers CPU batches stop getting faster


def default_budget(device: torch.device) -> int:
    """Bytes for per-query buffers: half the free memory of a CUDA device; on the CPU an
    eighth of physical memory, at most ``CPU_BUDGET_CAP``."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 8 << 30
    return min(CPU_BUDGET_CAP, physical // 8)
