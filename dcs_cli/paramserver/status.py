"""The server's live status line: clients, steps and rows/s, rewritten in place on a terminal.

The socket loop (server.py) makes one `StatusLine` of its `ServerState`, calls `update(now)` on every
turn and `close()` when it stops. The line is redrawn at most once a second on a terminal; otherwise a
log line is written at most once a minute, and only while rows are moving.
"""

from __future__ import annotations

import sys
import time

from dcs_cli.console import console, info, is_quiet
from dcs_cli.paramserver.state import ServerState


class StatusLine:
    """One self-rewriting stderr line (clients, step, rows/s) on a terminal; a log line a minute otherwise."""

    def __init__(self, server: ServerState):
        self.server = server
        self.tty = console.is_terminal and not is_quiet()
        self.last = time.monotonic()
        self.last_rows = 0
        self.period = 1.0 if self.tty else 60.0
        self.shown = False

    def update(self, now: float) -> None:
        if now - self.last < self.period or is_quiet():
            return
        c = self.server.counters
        rows = c["rows_read"] + c["rows_pushed"]
        rate = (rows - self.last_rows) / (now - self.last)
        self.last, self.last_rows = now, rows
        steps = " ".join(f"{m.spec.name}@{m.step}" for m in self.server.matrices) or "-"
        text = (
            f"clients {len(self.server.clients)} | step {steps} | {rate:,.0f} rows/s | "
            f"requests {c['requests']:,} | errors {c['errors']:,} | dropped {c['clients_dropped']}"
        )
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + text)
            sys.stderr.flush()
            self.shown = True
        elif rate > 0:
            info(text)

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
