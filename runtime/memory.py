"""How much memory a run may use for per-query buffers (the batch size follows from it)."""

from __future__ import annotations

import torch

# On the CPU a batch runs fastest while its buffers stay near the size of the caches: on the
# project's 2-core machine EfficientNet-Lite0 ran a 729-query heatmap 2.6× faster at 32 queries
# per batch (64 MiB of buffers) than in one batch, and VGG16 and ResNet18 were flat from 32 to
# 64 queries per batch. Parallelism gains nothing past that on a CPU.
CPU_BUDGET = 64 << 20


def default_budget(device: torch.device) -> int:
    """Bytes for per-query buffers: half the free memory of a CUDA device; ``CPU_BUDGET`` on
    the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free // 2
    return CPU_BUDGET
