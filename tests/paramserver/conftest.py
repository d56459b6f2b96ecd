"""Fixtures for paramserver tests: a real server process on a free loopback port, stopped afterwards."""

from __future__ import annotations

import pytest

from dcs_cli.paramserver.launcher import start_background

HEARTBEAT_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One shared server per test module; each test uses its own matrix name."""
    snapshots = tmp_path_factory.mktemp("snapshots")
    handle = start_background(
        "tcp://127.0.0.1:*", heartbeat_timeout=HEARTBEAT_TIMEOUT, snapshot_dir=str(snapshots)
    )
    yield handle
    assert handle.stop() == 0, handle.log()
