"""A pytest plugin that runs MONAI's own tests against the drop-in: before any test module is
imported, ``monai.visualize.OcclusionSensitivity`` becomes ``krypton_ql.monai``'s (MONAI's
test file imports it from there, unchanged). The summary says how many calls the engine ran
and how many went to MONAI.

    python -m pytest -p tests.thirdparty.monai_swap ../shared/thirdparty/monai/
"""

from __future__ import annotations

import monai.visualize

from krypton_ql.monai import OcclusionSensitivity

CALLS = {"accelerated": 0, "delegated": 0}


class Counted(OcclusionSensitivity):
    def __call__(self, *args, **kwargs):
        result = super().__call__(*args, **kwargs)
        CALLS["delegated" if self.delegated else "accelerated"] += 1
        return result


def pytest_configure(config) -> None:
    monai.visualize.OcclusionSensitivity = Counted


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.write_line(
        f"krypton_ql.monai: {CALLS['accelerated']} calls accelerated, "
        f"{CALLS['delegated']} handed to MONAI"
    )
