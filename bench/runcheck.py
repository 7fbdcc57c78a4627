"""Is the run a bench timed the kind of run its figure names? Checked from the build's own events.

A figure that silently measures something else is worse than none: a "cold" build that took its
layers from a cache, a "no-op" that rebuilt, a "one change" that ran everything. Each bench
passes ``--build-event-json FILE`` to the build it times and calls one of the checks below on that
file; a check that fails raises :class:`WrongRunKind` (a ``SystemExit``), so the script stops
before it prints the figure, saying what the run was instead.

Figures that are not of a build (a pull, a sandbox start, the layer writer, the launcher on a
prepared image) check their own premise and call :func:`refuse` when it does not hold, so every
refusal reads alike. ``pbuild pull`` writes no build events: :func:`expect_pull` reads the
report line it prints (blobs downloaded, blobs from the cache).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

EXECUTED = "executed"


class WrongRunKind(SystemExit):
    """The timed run was not the kind its figure claims: no figure is printed."""

    def __init__(self, figure: str, expected: str, events: BuildEvents | str) -> None:
        found = f"the run's events say {events.describe()}" if isinstance(events, BuildEvents) else events
        super().__init__(f"bench: refusing to report {figure!r}: expected {expected}, but {found}")


def refuse(figure: str, expected: str, found: str) -> WrongRunKind:
    """The refusal of a figure whose premise is not a build's (``raise refuse(...)``)."""
    return WrongRunKind(figure, expected, found)


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


def expect_built(path: Path | str, figure: str) -> BuildEvents:
    """The build finished and nothing failed, whatever ran: the premise of a figure taken on its
    outputs (an unpacked image, a wheel), not of the build's own time."""
    events = BuildEvents.read(path)
    if not events.summary or any(a.status == "failed" for a in events.actions):
        raise WrongRunKind(figure, "a finished build with no failed action", events)
    return events


def expect_mnemonics(path: Path | str, figure: str, executed: Mapping[str, int]) -> BuildEvents:
    """Exactly ``executed`` ran (``{mnemonic: count}``), every other action came from the cache:
    an incremental build's own chain, named, not only counted."""
    events = BuildEvents.read(path)
    ran = Counter(a.mnemonic for a in events.executed())
    failed = any(a.status == "failed" for a in events.actions)
    if not events.summary or failed or ran != Counter(executed):
        wanted = ", ".join(f"{n} {m}" for m, n in sorted(executed.items())) or "nothing"
        raise WrongRunKind(figure, f"exactly {wanted} executed", events)
    return events


def expect_tests_cached(path: Path | str, figure: str, tests: int) -> BuildEvents:
    """``pbuild test`` of ``tests`` targets took every result (and every build action) from the
    local cache: no test ran, none is missing."""
    events = BuildEvents.read(path)
    results = [a for a in events.actions if a.mnemonic == "TestRunner"]
    if (not events.summary or events.executed() or len(results) != tests
            or any(a.status != "cached" for a in events.actions)):
        raise WrongRunKind(figure, f"{tests} cached TestRunner results and nothing executed", events)
    return events


_PULLED = re.compile(r"digest (sha256:[0-9a-f]{64}) \(([^)]*)\), (\d+) blob\(s\) downloaded \(([\d,]+) bytes\), "
                     r"(\d+) from the cache")


@dataclass(frozen=True)
class PullReport:
    """What one ``pbuild pull`` says it did."""

    digest: str
    downloaded: int
    bytes_downloaded: int
    cached: int


def expect_pull(output: str, figure: str, *, cold: bool, by_tag: bool = True) -> PullReport:
    """A cold pull downloaded every blob; a warm one none (every blob from the cache).

    A pull by tag stores the manifest as it resolves the tag (lib/oci/registry/pull.py), then
    finds it in the cache when it reads it: its bytes count as downloaded, the blob as "from the
    cache". So a cold pull by tag says exactly 1 from the cache, by digest none. That counts
    blobs, not bytes: the bench also compares the bytes with the image's own size."""
    match = _PULLED.search(output)
    if match is None:
        raise refuse(figure, "pbuild pull's report line", f"it printed {output.strip()!r}")
    report = PullReport(match.group(1), int(match.group(3)), int(match.group(4).replace(",", "")),
                        int(match.group(5)))
    from_cache = 1 if by_tag else 0
    honest = (report.downloaded > 0 and report.bytes_downloaded > 0 and report.cached == from_cache if cold
              else report.downloaded == 0 and report.bytes_downloaded == 0 and report.cached > 0)
    if not honest:
        expected = (f"every blob downloaded ({from_cache} from the cache: the tag's manifest)" if cold
                    else "no blob downloaded, all from the cache")
        raise refuse(figure, expected, f"the pull says {match.group(0)!r}")
    return report


def fresh(path: Path | str) -> str:
    """``path`` with no file left there: a build that writes no events must not pass for the
    last run's (pass what this returns to ``--build-event-json``)."""
    Path(path).unlink(missing_ok=True)
    return str(path)


