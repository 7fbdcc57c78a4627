"""Healthcheck results -> health, Docker's rule (tools/stack/health.py)."""

from __future__ import annotations

from pbuild.tools.stack.health import FIRST_PROBE_S, STARTING_PROBE_S, CheckResult, HealthState, next_probe
from pbuild.tools.stack.spec import Healthcheck

CHECK = Healthcheck(("true",), interval_s=1, retries=3, start_period_s=5)
OK, FAIL = CheckResult(0, "fine\n"), CheckResult(1, "refused\n")


def test_starting_until_the_first_success_then_healthy() -> None:
    state = HealthState()
    assert state.status == "starting"
    state = state.after(CHECK, OK, since_start=1)
    assert state == HealthState("healthy", 0, "fine\n")


def test_failures_in_the_start_period_do_not_count() -> None:
    state = HealthState()
    for t in range(5):
        state = state.after(CHECK, FAIL, since_start=t)
    assert state.status == "starting" and state.failures == 0 and state.last_output == "refused\n"


def test_unhealthy_after_retries_failures_in_a_row_and_a_success_heals() -> None:
    state = HealthState()
    state = state.after(CHECK, FAIL, since_start=6)
    state = state.after(CHECK, FAIL, since_start=7)
    assert (state.status, state.failures) == ("starting", 2)
    state = state.after(CHECK, FAIL, since_start=8)
    assert (state.status, state.failures) == ("unhealthy", 3)
    state = state.after(CHECK, OK, since_start=9)
    assert (state.status, state.failures) == ("healthy", 0)


def test_a_healthy_service_counts_failures_even_in_its_start_period() -> None:
    state = HealthState().after(CHECK, OK, since_start=0)
    for t in (1, 2, 3):
        state = state.after(CHECK, FAIL, since_start=t)
    assert state.status == "unhealthy"


def test_the_output_kept_is_bounded() -> None:
    state = HealthState().after(CHECK, CheckResult(1, "x" * 100_000), since_start=10)
    assert len(state.last_output) == 4096


def test_a_starting_service_is_probed_sooner_but_counted_once_per_interval() -> None:
    slow = Healthcheck(("true",), interval_s=30, retries=1)
    waits = [next_probe(slow, HealthState(), probes) for probes in range(6)]
    assert waits[0] == FIRST_PROBE_S and waits == sorted(waits) and waits[-1] == STARTING_PROBE_S
    assert next_probe(slow, HealthState("healthy"), 5) == 30
    assert next_probe(Healthcheck(("true",), interval_s=0.08), HealthState(), 5) == 0.08
    early = HealthState().after(slow, FAIL, since_start=0.25, counts=False)
    assert (early.status, early.failures, early.last_output) == ("starting", 0, "refused\n")
    assert early.after(slow, FAIL, since_start=30, counts=True).status == "unhealthy"
