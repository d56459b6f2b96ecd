"""Option types shared by several commands (Typer `Annotated` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dcs_cli.config_fields import SEED_LIMIT
from dcs_cli.errors import UsageError
from dcs_cli.fsutil import check_output_file

ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML config file (see configs/).", show_default=False)
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config key: --set selection.sample_num=1000 (repeatable).",
                 show_default=False),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace a finished output folder.")]


def seed_value(seed: int) -> int:
    """Option callback for `--seed`: the range every generator takes (`config_fields.SEED_LIMIT`)."""
    if not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"--seed must be in [0, {SEED_LIMIT - 1}], got {seed}")
    return seed


def output_file(path: Optional[Path]) -> Optional[Path]:
    """Option callback for a file a command writes at the end: a path that could not be written is a
    one-line error before the work starts, not after it."""
    if path is not None:
        check_output_file(path)
    return path


JsonOpt = Annotated[
    Optional[Path],
    typer.Option("--json", help="Also write the results as JSON to this file.", show_default=False,
                 callback=output_file),
]
