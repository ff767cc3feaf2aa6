"""Hypothesis settings shared by the fuzz tests (minimal version; helper H7 owns the full one).

CI runs a fixed-seed, derandomized short version; `make fuzz` sets FUZZ_EXAMPLES
(and FUZZ_SECONDS) for long runs.
"""

from __future__ import annotations

import os

import hypothesis


def fuzz_settings(**overrides) -> hypothesis.settings:  # type: ignore[no-untyped-def]
    kw = dict(
        derandomize=True,
        max_examples=int(os.environ.get("FUZZ_EXAMPLES", "50")),
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        database=None,
    )
    kw.update(overrides)
    return hypothesis.settings(**kw)
