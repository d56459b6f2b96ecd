"""One rich console for the whole tool, progress bars with rate and ETA, and result tables.

    >>> with progress_bar("converting", total=3, unit="images") as advance:   # drawn on stderr
    ...     for _ in range(3):
    ...         advance(1)
    >>> print_table("convert", [{"images": 3, "seconds": 0.25}])   # rows: dicts with the same keys
    convert
    ...images...seconds...
    ...3...0.25...

Progress bars are off with `--quiet` or when stderr is not a terminal; tables go to stdout, info lines
(`info`, `warn`, `error_line`) to stderr.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

console = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)
if not out.is_terminal:  # tables piped to a file or CI log: do not squeeze them into 80 columns
    out.width = max(out.width, 160)

_state = {"quiet": False, "verbose": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def set_verbose(verbose: bool) -> None:
    _state["verbose"] = verbose


def is_quiet() -> bool:
    return _state["quiet"]


def is_verbose() -> bool:
    return _state["verbose"]


def progress_enabled() -> bool:
    return not _state["quiet"] and console.is_terminal


class _Rate(ProgressColumn):
    """Items per second in the progress bar's own unit (images/s, steps/s)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"? {self.unit}/s", style="progress.data.speed")


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, unit: str = "it") -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`; shows a bar with count, rate and ETA unless quiet or not a terminal."""
    if not progress_enabled():
        yield lambda n=1: None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _Rate(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def info(message: str) -> None:
    if not _state["quiet"]:
        console.print(message, soft_wrap=True)  # log lines stay whole when stderr is a file or a pipe


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


def error_line(message: str) -> None:
    console.print(f"[bold red]error:[/bold red] {message}", soft_wrap=True)


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):  # a figure that does not apply to the row (full softmax's recall): JSON null
            return "–"
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.1f}"
        return f"{value:.3e}"
    return str(value)


def print_table(title: str, rows: Sequence[dict], columns: Sequence[str] | None = None) -> None:
    """Print result rows (dicts) as a rich table on stdout; floats get sensible precision. By default every
    key of any row (in order of first appearance) but those holding lists (per-round or per-run detail,
    which a table cannot show legibly: it stays in the JSON)."""
    if not rows:
        out.print(f"{title}: (no rows)")
        return
    if not columns:
        keys = dict.fromkeys(key for row in rows for key in row)
        lists = {key for row in rows for key, value in row.items() if isinstance(value, list)}
        columns = [key for key in keys if key not in lists]
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[_fmt(row.get(c, "")) for c in columns])
    out.print(table)
