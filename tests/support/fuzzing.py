"""Hypothesis settings for every fuzzer, and the time-bounded `make fuzz` run.

Two modes:

* CI (`make test`, plain pytest): `fuzz_settings()` is derandomized (a fixed
  seed per test) with a small fixed number of examples (ZCONV_FUZZ_EXAMPLES,
  default 50), so the whole fuzz set stays short and every run tries the same
  inputs.
* Long (`make fuzz`, i.e. FUZZ_SECONDS set; tests/conftest.py loads this
  module as a pytest plugin, whose hooks do nothing in CI): each test marked `fuzz` is run again and
  again, every round a fresh random hypothesis run of FUZZ_BATCH examples,
  until its share of FUZZ_SECONDS is spent (hypothesis has no time budget of
  its own; the rounds give one without touching its internals). A failure
  stops the test at once with hypothesis's shrunk example. The number of
  inputs tried is printed at the end, per fuzzer, and written to FUZZ_REPORT
  (JSON) when that is set.

Fuzz tests call `tried(name)` once per input so the count is of inputs really
run, not of rounds.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

FUZZ_SECONDS = float(os.environ["FUZZ_SECONDS"]) if os.environ.get("FUZZ_SECONDS") else None
CI_EXAMPLES = int(os.environ.get("ZCONV_FUZZ_EXAMPLES", "50"))
FUZZ_BATCH = int(os.environ.get("FUZZ_BATCH", "40"))

COUNTS: Counter[str] = Counter()


def long_run() -> bool:
    """True under `make fuzz` (a time budget was given)."""
    return FUZZ_SECONDS is not None


def fuzz_settings(**overrides: Any) -> settings:
    """Settings for a fuzz test; `overrides` (e.g. a smaller max_examples for a slow fuzzer) apply in CI.

    In a long run the number of examples and the randomness are the run's
    business: max_examples and derandomize overrides are ignored there.
    """
    base: dict[str, Any] = {
        "deadline": None,
        "database": None,
        "suppress_health_check": list(HealthCheck),
        "print_blob": True,
    }
    if long_run():
        overrides = {k: v for k, v in overrides.items() if k not in ("max_examples", "derandomize")}
        base.update(max_examples=FUZZ_BATCH, derandomize=False)
    else:
        base.update(max_examples=CI_EXAMPLES, derandomize=True)
    base.update(overrides)
    return settings(**base)


def tried(name: str, n: int = 1) -> None:
    """Count `n` inputs tried by fuzzer `name`."""
    COUNTS[name] += n


def report() -> dict[str, Any]:
    return {"total": sum(COUNTS.values()), "per_fuzzer": dict(sorted(COUNTS.items()))}


# ------------------------------------------------------------------ pytest plugin (make fuzz)

_state: dict[str, Any] = {"start": None, "left": 0}


def pytest_configure(config: pytest.Config) -> None:
    _state["start"] = time.monotonic()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    _state["left"] = sum(1 for it in items if it.get_closest_marker("fuzz") is not None)
    _state["start"] = time.monotonic()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not long_run() or pyfuncitem.get_closest_marker("fuzz") is None:
        return None
    assert FUZZ_SECONDS is not None
    # This test's share of what is left of the budget.
    left = max(_state["left"], 1)
    remaining = FUZZ_SECONDS - (time.monotonic() - _state["start"])
    deadline = time.monotonic() + max(remaining / left, 0.0)
    _state["left"] = left - 1
    fn = pyfuncitem.obj
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    while True:
        fn(**args)
        if time.monotonic() >= deadline:
            break
    return True


def pytest_terminal_summary(terminalreporter: Any) -> None:
    rep = report()
    if not rep["total"]:
        return
    terminalreporter.write_line(f"fuzz inputs tried: {rep['total']}")
    for name, n in rep["per_fuzzer"].items():
        terminalreporter.write_line(f"  {name}: {n}")
    path = os.environ.get("FUZZ_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(rep, f, indent=1)
