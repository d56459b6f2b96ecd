"""Building blocks of config sections: a documented field and a validation check.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class ExampleSection:
    ...     sample_num: int = opt(1000, "active classes per mini-batch")
    ...
    ...     def validate(self, key: str) -> None:
    ...         require(self.sample_num > 0, f"{key}.sample_num", "must be > 0")
    >>> ExampleSection().sample_num
    1000
    >>> ExampleSection(sample_num=0).validate("selection")
    Traceback (most recent call last):
    ...
    dcs_cli.errors.ConfigError: selection.sample_num must be > 0

Kept apart from `dcs_cli.config` (which composes the sections) so a section module imports without cycles.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import field
from typing import Any

from dcs_cli.errors import ConfigError


def opt(default: Any, help: str, **kwargs) -> Any:
    """A config field with its documentation (listed by `describe()` and the README)."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


def require(ok: bool, key: str, message: str) -> None:
    """Raise ConfigError("key message") unless `ok`."""
    if not ok:
        raise ConfigError(f"{key} {message}")


SEED_LIMIT = 2**32  # seeds lie in [0, 2^32): what numpy's and torch's generators all take


def require_seed(seed: int, key: str) -> None:
    require(0 <= seed < SEED_LIMIT, key, f"must be in [0, {SEED_LIMIT - 1}]")
