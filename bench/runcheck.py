"""Is the run a bench timed the kind of run its figure names? Checked from the build's own events.

A figure that silently measures something else is worse than none: a "cold" build that took its
layers from a cache, a "no-op" that rebuilt, a "one change" that ran everything. Each bench
passes ``--build-event-json FILE`` to the build it times and calls one of the checks below on that
file; a check that fails raises :class:`WrongRunKind` (a ``SystemExit``), so the script stops
before it prints the figure, saying what the run was instead.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

EXECUTED = "executed"


class WrongRunKind(SystemExit):
    """The timed run was not the kind its figure claims: no figure is printed."""

    def __init__(self, figure: str, expected: str, events: BuildEvents) -> None:
        super().__init__(
            f"bench: refusing to report {figure!r}: expected {expected}, but the run's events say "
            f"{events.describe()}"
        )


@dataclass(frozen=True)
class ActionEvent:
    label: str
    mnemonic: str
    status: str  # executed | cached | remote_cached | failed | ...


@dataclass(frozen=True)
class BuildEvents:
    """The action events and the summary of one build (``--build-event-json``)."""

    actions: tuple[ActionEvent, ...]
    summary: dict[str, object]

    @classmethod
    def read(cls, path: Path | str) -> BuildEvents:
        actions: list[ActionEvent] = []
        summary: dict[str, object] = {}
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            if event.get("type") == "action":
                actions.append(ActionEvent(event["label"], event["mnemonic"], event["status"]))
            elif event.get("type") == "summary":
                summary = event
        return cls(tuple(actions), summary)

    def statuses(self) -> Counter[str]:
        """``MNEMONIC:status`` counts, the line a bench prints beside a figure."""
        return Counter(f"{a.mnemonic}:{a.status}" for a in self.actions)

    def executed(self) -> list[ActionEvent]:
        return [a for a in self.actions if a.status == EXECUTED]

    def describe(self) -> str:
        if not self.summary:
            return "no summary (the build did not finish)"
        counts = Counter(a.status for a in self.actions)
        text = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no actions"
        return f"{len(self.actions)} actions: {text} ({dict(sorted(self.statuses().items()))})"


def expect_cold(path: Path | str, figure: str, *, may_be_cached: Iterable[str] = ()) -> BuildEvents:
    """Every action ran (those of the mnemonics in ``may_be_cached``, e.g. downloads, may come
    from the cache), and at least one did."""
    events = BuildEvents.read(path)
    allowed = set(may_be_cached)
    ran_all = all(a.status == EXECUTED or a.mnemonic in allowed for a in events.actions)
    if not events.summary or not events.executed() or not ran_all:
        what = "every action executed" + (f" (but {', '.join(sorted(allowed))})" if allowed else "")
        raise WrongRunKind(figure, what, events)
    return events


def expect_noop(path: Path | str, figure: str) -> BuildEvents:
    """Nothing ran and nothing failed."""
    events = BuildEvents.read(path)
    if not events.summary or events.executed() or any(a.status == "failed" for a in events.actions):
        raise WrongRunKind(figure, "no action executed", events)
    return events


def expect_executed(path: Path | str, figure: str, count: int) -> BuildEvents:
    """Exactly ``count`` actions ran (an incremental build: the changed file's chain, no more)."""
    events = BuildEvents.read(path)
    if not events.summary or len(events.executed()) != count:
        raise WrongRunKind(figure, f"exactly {count} actions executed", events)
    return events


def expect_all_remote(path: Path | str, figure: str) -> BuildEvents:
    """Every action came from the remote cache: none ran here, none was in the local cache."""
    events = BuildEvents.read(path)
    if not events.summary or not events.actions or any(a.status != "remote_cached" for a in events.actions):
        raise WrongRunKind(figure, "every action from the remote cache", events)
    return events
