"""Build events: the JSON-lines event file, the live progress display, and the closing line."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

STATUSES = ("cached", "remote_cached", "executed", "remote_executed", "failed")


@dataclass
class Summary:
    actions: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    wall_ms: float = 0.0

    def line(self) -> str:
        parts = [f"{self.counts[s]} {s.replace('_', ' ')}" for s in STATUSES if self.counts[s]]
        noun = "action" if self.actions == 1 else "actions"
        body = ", ".join(parts) if parts else "nothing to do"
        return f"{self.actions} {noun}: {body} in {self.wall_ms / 1000:.2f} s"


class Reporter:
    """Receives action events from the executor (from several threads) and shows them."""

    def __init__(self, *, event_file: str | None = None, stream: IO[str] | None = None,
                 interactive: bool | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self._events: IO[str] | None = None
        if event_file:
            try:
                self._events = open(event_file, "w", encoding="utf-8")
            except OSError as exc:
                from pbuild.engine.errors import PbuildError

                raise PbuildError(f"--build-event-json {event_file}: {exc.strerror}",
                                  hint="write the events to a file in a folder that exists and is writable") from None
        self._lock = threading.Lock()
        self.summary = Summary()
        self._start = time.monotonic()
        self._running: dict[int, str] = {}
        self._total = 0
        self._done = 0
        self._live: Any = None

    def start(self, total: int) -> None:
        self._total = total
        if self.interactive and not self.quiet and total:
            from rich.console import Console  # imported only on a terminal: rich is slow to import
            from rich.live import Live

            self._live = Live(console=Console(file=self.stream), refresh_per_second=8, transient=True,
                              get_renderable=self._render)
            self._live.start()

    def _render(self) -> Any:
        from rich.text import Text

        with self._lock:
            running = list(self._running.values())[:6]
            done, total = self._done, self._total
        text = Text(f"[{done}/{total}] ", style="bold")
        text.append(f"{len(running)} running", style="cyan")
        for desc in running:
            text.append(f"\n  {desc}")
        return text

    def action_started(self, ident: int, description: str) -> None:
        with self._lock:
            self._running[ident] = description

    def action_finished(self, *, ident: int, label: str, mnemonic: str, key: str, status: str,
                        duration_ms: float, description: str = "") -> None:
        with self._lock:
            self._running.pop(ident, None)
            self._done += 1
            self.summary.actions += 1
            self.summary.counts[status] += 1
            if self._events is not None:
                self._events.write(json.dumps({
                    "type": "action", "label": label, "mnemonic": mnemonic, "key": key,
                    "status": status, "duration_ms": round(duration_ms, 3),
                }) + "\n")
            if status in ("executed", "remote_executed") and not self.interactive and not self.quiet:
                self.stream.write(f"[{self._done}/{self._total}] {description or mnemonic + ' ' + label}\n")

    def message(self, text: str) -> None:
        with self._lock:
            if self._live is not None:
                self._live.console.print(text, markup=False, highlight=False)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    def finish(self, *, print_summary: bool = True) -> Summary:
        self.summary.wall_ms = (time.monotonic() - self._start) * 1000
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._events is not None:
            counts = self.summary.counts
            self._events.write(json.dumps({
                "type": "summary", "actions": self.summary.actions, "cached": counts["cached"],
                "remote_cached": counts["remote_cached"], "executed": counts["executed"],
                "remote_executed": counts["remote_executed"], "failed": counts["failed"], "wall_ms": round(self.summary.wall_ms, 3),
            }) + "\n")
            self._events.close()
            self._events = None
        if not self.quiet and print_summary:
            self.stream.write(self.summary.line() + "\n")
            self.stream.flush()
        return self.summary
