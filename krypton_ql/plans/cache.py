"""Compiled plans and exported programs kept between calls, so that a loop over images (or a
Captum loop over a data loader's batches) exports and compiles once.

A plan is found again only for the same model object with the same parameters and buffers
(``fingerprint.versions``: each tensor's identity, storage and in-place version counter, and
every module's training flag — ``mul_``, ``copy_``, ``load_state_dict``, ``.train()`` all
change it), the same dtype and device, and equal ``Options`` (input shape, patch, stride,
colour, target, score, precision, approximation, …). A changed model compiles afresh; an entry
of a model that was garbage-collected is never served (weak references). Both caches are
bounded (least recently used first out): ``PLANS.capacity`` plans and
``exports.EXPORTS_KEPT`` exported programs.

``kql.plan_cache`` is ``PLANS``: ``.info()`` counts hits and misses, ``.clear()`` empties both
caches (``kql.compile`` always compiles a new plan, from the kept export when there is one).
A plan in use by one thread is not handed to another: that one gets a fresh, uncached plan.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from krypton_ql import fingerprint
from krypton_ql.plans import exports
from krypton_ql.plans.build import build_plan
from krypton_ql.plans.exports import place

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    model: weakref.ref
    plan: Any
    uses: int = 0
    busy: bool = False


class PlanCache:
    """Compiled plans by model versions and options (the module's doc)."""

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @contextmanager
    def borrow(self, model: nn.Module, options: Any) -> Iterator[Any]:
        """The compiled plan of ``model`` and ``options`` — kept from an earlier call, else
        compiled and kept — for the ``with`` block; ``plan.from_cache`` says which."""
        key = (fingerprint.versions(model), place(model), options)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.model() is not model:  # another model, same address
                del self._entries[key]
                entry = None
            if entry is not None and entry.busy:  # in use by another thread: compile afresh
                entry = None
            if entry is not None:
                entry.busy, entry.uses = True, entry.uses + 1
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
        if entry is not None:
            log.info("plan from the cache (use %d): %s", entry.uses, type(model).__name__)
            entry.plan.from_cache = True
            try:
                yield entry.plan
            finally:
                _forget(entry.plan)
                with self._lock:
                    entry.busy = False
            return
        plan = build_plan(model, options)
        plan.from_cache = False
        fresh = _Entry(weakref.ref(model), plan, 1, True)
        with self._lock:
            if key not in self._entries:
                self._entries[key] = fresh
                while len(self._entries) > self.capacity:
                    self._evict()
        try:
            yield plan
        finally:
            _forget(plan)
            with self._lock:
                fresh.busy = False

    def _evict(self) -> None:
        for key, entry in self._entries.items():  # least recently used first
            if not entry.busy:
                del self._entries[key]
                return
        self._entries.popitem(last=False)

    def uses(self, model: nn.Module, options: Any) -> int:
        """How many calls the kept plan of ``model`` and ``options`` has served (0: none kept)."""
        key = (fingerprint.versions(model), place(model), options)
        with self._lock:
            entry = self._entries.get(key)
            return entry.uses if entry is not None and entry.model() is model else 0

    def clear(self) -> None:
        """Forget every kept plan and exported program."""
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0
        exports.clear()

    def info(self) -> dict[str, int]:
        """Hits, misses, kept plans and kept exported programs."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "plans": len(self._entries),
                    "exports": exports.kept()}  # fmt: skip

    def __len__(self) -> int:
        return len(self._entries)


def _forget(plan: Any) -> None:
    """A kept plan holds no image's views between calls."""
    for inner in (plan, getattr(plan, "inner", None), getattr(plan, "coarse", None),
                  getattr(plan, "fine", None)):  # fmt: skip
        forget = getattr(inner, "forget_clean", None)
        if forget is not None:
            forget()


PLANS = PlanCache()
