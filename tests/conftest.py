"""Shared test configuration: hypothesis profiles, the gpu marker, deterministic torch."""

from __future__ import annotations

import os

import torch

# Triton kernels run in the interpreter on machines without CUDA; the switch must be on before
# any kernel is decorated, i.e. before pytest imports a kernel module (tests or doctests).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# Under pytest-xdist (make test runs two workers on two cores) each worker keeps one torch
# thread: two workers of two threads each would oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

from tests import profiles  # noqa: E402

profiles.register()
profiles.load(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
