"""Shared fixtures: the CLI runner, the repository root and the mxnet-written fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def mxnet_fixtures() -> Path:
    folder = FIXTURES / "mxnet"
    if not (folder / "train.rec").exists():
        pytest.skip(f"mxnet fixtures not found at {folder}")
    return folder


@pytest.fixture
def pairs_bin(mxnet_fixtures) -> Path:
    """The 12-pair `.bin` written the way InsightFace writes lfw.bin (pickle protocol 2, JPEG bytes)."""
    return mxnet_fixtures / "pairs.bin"
