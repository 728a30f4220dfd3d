"""Hypothesis profiles (``HYPOTHESIS_PROFILE``; ``tests/conftest.py`` loads one).

- ``ci`` (the default, and what ``.ci/run`` sets): derandomized — every run draws the same
  examples, so CI is repeatable — at each test's own example count.
- ``thorough``: random draws, the example database (a failure found once is replayed first
  next time) and ten times each test's example count. Run it before resolving an issue that
  touches the compiler or the runtime: ``make thorough``.
- ``dev``: random draws at the ``ci`` counts.
- ``mutation``: the ``ci`` draws without shrinking a failure (a mutation tester only needs to
  know that a test fails; ``make mutmut`` sets it).

A test sizes its example count with ``examples(n)``: ``n`` under ``ci``, scaled with the
profile's ``max_examples`` (100 under ``ci``).
"""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase

PROFILES = ("ci", "dev", "thorough", "mutation")
BASE = 100  # max_examples of the ci profile: examples(n) scales n by max_examples / BASE


def register() -> None:
    common = dict(
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    settings.register_profile("ci", derandomize=True, database=None, max_examples=BASE, **common)
    settings.register_profile("dev", max_examples=BASE, **common)
    settings.register_profile(
        "mutation",
        derandomize=True,
        database=None,
        max_examples=BASE,
        phases=(Phase.explicit, Phase.generate),
        report_multiple_bugs=False,
        **common,
    )
    settings.register_profile(
        "thorough",
        database=DirectoryBasedExampleDatabase(".hypothesis/examples"),
        max_examples=10 * BASE,
        **common,
    )


def load(name: str) -> None:
    """Load a profile by name; an unknown name is an error, not a silent default."""
    if name not in PROFILES:
        raise ValueError(f"HYPOTHESIS_PROFILE must be one of {', '.join(PROFILES)}, got {name!r}")
    settings.load_profile(name)


def examples(count: int) -> int:
    """A test's example count under the loaded profile.

    >>> examples(15) == 15 * settings().max_examples // BASE
    True
    """
    return max(1, count * settings().max_examples // BASE)
