"""The shared-memory transport (same-host clients) and the reuse of sent rows by the update."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from dcs_cli.errors import ServerError
from dcs_cli.paramserver import shm
from dcs_cli.paramserver.client import RemoteStore
from dcs_cli.paramserver.client_socket import RequestTimeout
from dcs_cli.paramserver.matrix import MatrixSpec, PendingPush, ServedMatrix
from dcs_cli.paramserver.protocol import FLAG_MOMENTUM, FLAG_SHARED, DType, Op, json_frame
from dcs_cli.selection.local_store import LocalStore
from dcs_cli.selection.row_update import sgd_rows_
from dcs_cli.selection.store import OptimParams

PARAMS = OptimParams(lr=0.05, momentum=0.9, weight_decay=1e-3)

pytestmark = pytest.mark.skipif(not shm.available(), reason="needs a writable /dev/shm (Linux)")


def _segments() -> set[str]:
    return {p.name for p in shm.SHM_DIR.glob("dcs-ps-*")}


def test_shared_memory_follows_local_store_exactly(server):
    n, d, steps = 400, 12, 10
    gen = torch.Generator().manual_seed(4)
    before = _segments()
    local = LocalStore(n, d, bias=True, init_std=0.1, seed=2, params=PARAMS)
    with RemoteStore(server.address, "shared-trajectory", n, d, bias=True, init_std=0.1, seed=2,
                     params=PARAMS) as remote:
        for step in range(steps):
            ids = torch.randperm(n, generator=gen)[: 30 + 5 * step]  # growing: the segment is re-attached
            gw, gb = torch.randn(len(ids), d, generator=gen), torch.randn(len(ids), generator=gen)
            w_remote, b_remote = remote.rows(ids)
            w_local, b_local = local.rows(ids)
            assert torch.equal(w_remote, w_local) and torch.equal(b_remote, b_local)
            remote.push(ids, gw, gb)
            local.push(ids, gw, gb)
        assert remote._shared.segment is not None and remote.stats()["shared_memory_clients"] >= 1
        state = remote.state_dict()
        for key in ("weight", "momentum", "bias", "bias_momentum"):
            assert torch.equal(state[key], getattr(local, key)), key
        assert _segments() == before  # unlinked as soon as the server mapped it
    assert remote._shared.segment is None


def test_two_clients_one_shared_one_on_frames_are_summed(server):
    n, d, steps = 150, 6, 4
    rng = np.random.default_rng(5)
    a = RemoteStore(server.address, "shared-two", n, d, params=PARAMS)
    b = RemoteStore(server.address, "shared-two", n, d, shared_memory=False)
    try:
        w = a.weights().numpy().copy()
        v = np.zeros_like(w)

        def step(store, ids, g):
            rows = store.rows(torch.from_numpy(ids))[0]  # a trainer's get, then its push
            store.push(torch.from_numpy(ids), torch.from_numpy(g))
            return rows

        with ThreadPoolExecutor(2) as pool:
            for _ in range(steps):
                ids_a, ids_b = rng.choice(n, 70, replace=False), rng.choice(n, 70, replace=False)
                ga = rng.standard_normal((70, d)).astype(np.float32)
                gb = rng.standard_normal((70, d)).astype(np.float32)
                fa, fb = pool.submit(step, a, ids_a, ga), pool.submit(step, b, ids_b, gb)
                # each get saw the weights after the previous step (float32 rounding of the reference aside)
                np.testing.assert_allclose(fa.result(timeout=30).numpy(), w[ids_a], rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(fb.result(timeout=30).numpy(), w[ids_b], rtol=1e-5, atol=1e-6)
                g = np.zeros_like(w)
                np.add.at(g, ids_a, ga)
                np.add.at(g, ids_b, gb)
                touched = np.union1d(ids_a, ids_b)
                v[touched] = PARAMS.momentum * v[touched] + g[touched] + PARAMS.weight_decay * w[touched]
                w[touched] -= PARAMS.lr * v[touched]
        assert a._shared.segment is not None and b._shared.segment is None
        np.testing.assert_allclose(b.weights().numpy(), w, rtol=1e-5, atol=1e-6)
    finally:
        a.close()
        b.close()


def test_sent_rows_are_used_only_while_the_weights_are_unchanged():
    spec = MatrixSpec("m", 30, 4, seed=1)
    ids = torch.tensor([2, 9, 17])
    grad = torch.randn(3, 4)
    for changed, expect_decoy in ((False, True), (True, False)):
        m = ServedMatrix(0, spec, PARAMS)
        m.members.add(1)
        w, mom = m.weight.clone(), m.momentum.clone()
        decoy = np.full((3, 4), 5.0, dtype=np.float32)  # not the table's rows: shows which ones were read
        m.remember_sent(1, ids.numpy(), decoy)
        if changed:
            m.changed()  # e.g. SET_ROWS after the GET
        m.add_push(1, PendingPush(ids, grad, None))
        m.apply()
        start = w.clone()
        if expect_decoy:
            start[ids] = torch.from_numpy(decoy)
        sgd_rows_(start, mom, ids, grad, PARAMS)
        assert torch.equal(m.weight[ids], start[ids])
        assert not m.sent  # consumed by the update either way
    m = ServedMatrix(0, spec, PARAMS)
    m.remember_sent(7, ids.numpy(), decoy)  # not a member: nothing kept
    assert not m.sent


def test_rows_sent_then_overwritten_are_not_reused(server):
    with RemoteStore(server.address, "shared-set", 80, 8, params=PARAMS) as store:
        ids, grad = torch.tensor([3, 4, 5]), torch.ones(3, 8)
        store.rows(ids)
        state = store.state_dict()
        state["weight"][ids] = 2.0
        store.load_state_dict(state)  # SET_ROWS between the GET and the PUSH
        store.push(ids, grad)
        w, m = state["weight"].clone(), state["momentum"].clone()
        sgd_rows_(w, m, ids, grad, PARAMS)
        assert torch.equal(store.rows(ids)[0], w[ids])


def _request(store, op, frames=(), **fields):
    return store._call(op, list(frames), **fields)


def test_bad_attach_and_shared_requests_are_refused(server, tmp_path):
    with RemoteStore(server.address, "shared-bad", 40, 4, params=PARAMS, shared_memory=False) as store:
        before = store.weights().clone()
        reply, frames = _request(store, Op.GET_ROWS, [np.arange(3)], dtype=DType.FLOAT32, rows=3, cols=4,
                                 flags=FLAG_SHARED)  # no segment to write into: answered with frames
        assert not reply.flags & FLAG_SHARED and len(frames) == 1
        with pytest.raises(ServerError, match="no shared-memory segment"):
            _request(store, Op.PUSH, [], dtype=DType.FLOAT32, rows=3, cols=4, flags=FLAG_SHARED)
        seg = shm.SharedSegment.create(256, 256)
        target = tmp_path / "elsewhere"
        target.write_bytes(b"\0" * 512)
        link = shm.SHM_DIR / f"dcs-ps-{'0' * 32}"
        try:
            os.symlink(target, link)
            cases = [
                ({"name": "../../etc/passwd", "reply_bytes": 256, "request_bytes": 256}, "name"),
                ({"name": seg.name, "reply_bytes": 512, "request_bytes": 256}, "announced"),
                ({"name": seg.name, "reply_bytes": 100, "request_bytes": 412}, "multiple of 64"),
                ({"name": seg.name, "reply_bytes": 256}, "exactly"),
                ({"name": link.name, "reply_bytes": 256, "request_bytes": 256}, "cannot open"),
                ({"name": f"dcs-ps-{'f' * 32}", "reply_bytes": 256, "request_bytes": 256}, "cannot open"),
            ]
            for spec, match in cases:
                with pytest.raises(ServerError, match=match):
                    _request(store, Op.ATTACH, [json_frame(spec)], dtype=DType.JSON)
            good = {"name": seg.name, "reply_bytes": 256, "request_bytes": 256}
            _request(store, Op.ATTACH, [json_frame(good)], dtype=DType.JSON)
            with pytest.raises(ServerError, match="do not fit"):  # 40 rows of 4 floats > 256 bytes
                _request(store, Op.GET_ROWS, [np.arange(40)], dtype=DType.FLOAT32, rows=40, cols=4,
                         flags=FLAG_SHARED)
            with pytest.raises(ServerError, match="do not fit"):
                _request(store, Op.PUSH, [], dtype=DType.FLOAT32, rows=2**40, cols=4, flags=FLAG_SHARED)
            ids_v, grad_v = seg.arrays(seg.request, [(np.dtype("<i8"), (2,)), (np.dtype("<f4"), (2, 4))])
            ids_v[:] = [1, 2]
            grad_v[:] = np.nan
            with pytest.raises(ServerError, match="NaN"):
                _request(store, Op.PUSH, [], dtype=DType.FLOAT32, rows=2, cols=4, flags=FLAG_SHARED)
        finally:
            link.unlink(missing_ok=True)
            seg.unlink()
        assert torch.equal(store.weights(), before)
        store.push(torch.tensor([1]), torch.ones(1, 4))  # the server is fine
    with RemoteStore(server.address, "shared-bad", 40, 4) as other:
        _request(other, Op.UNREGISTER)  # left the barrier: an ATTACH is refused now
        with pytest.raises(ServerError, match="not registered"):
            _request(other, Op.ATTACH, [json_frame({"name": "x", "reply_bytes": 64, "request_bytes": 64})],
                     dtype=DType.JSON)


def test_a_server_that_cannot_map_the_segment_means_frames(server, monkeypatch, capsys):
    real_create = shm.SharedSegment.create

    def create_then_lose(*args):
        seg = real_create(*args)
        seg.unlink()  # as if the server ran on another host: the name leads nowhere there
        return seg

    monkeypatch.setattr(shm.SharedSegment, "create", create_then_lose)
    with RemoteStore(server.address, "shared-fallback", 60, 4, params=PARAMS) as store:
        w = store.rows(torch.tensor([1, 2, 3]))[0]
        assert store._shared.segment is None and not store._shared.enabled
        store.push(torch.tensor([1, 2, 3]), torch.ones(3, 4))
        assert store.step == 1 and not torch.equal(store.rows(torch.tensor([1, 2, 3]))[0], w)
    assert "shared memory not used" in capsys.readouterr().err


def test_a_timeout_on_a_shared_request_ends_shared_memory_for_the_store(server, monkeypatch):
    with RemoteStore(server.address, "shared-timeout", 60, 4, params=PARAMS) as store:
        store.rows(torch.tensor([1]))
        assert store._shared.segment is not None

        def late(*args, **kwargs):
            raise RequestTimeout("no reply")

        store._call = late  # the instance attribute hides the method until deleted
        with pytest.raises(RequestTimeout):
            store.rows(torch.tensor([1]))
        del store._call
        assert store._shared.segment is None and not store._shared.enabled
        store.push(torch.tensor([1]), torch.ones(1, 4))  # carries on over frames
        assert store.step == 1


def test_a_killed_client_leaves_no_segment_behind(server):
    before = _segments()
    script = (
        "import sys, torch\n"
        "from dcs_cli.paramserver.client import RemoteStore\n"
        "s = RemoteStore(sys.argv[1], 'shared-kill', 20000, 8)\n"
        "s.rows(torch.arange(5000))\n"
        "print('fetched', s._shared.segment is not None, flush=True)\n"
        "sys.stdin.readline()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", script, server.address], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "fetched True"
        assert _segments() == before
    finally:
        proc.kill()
        proc.wait()
    assert _segments() == before


def test_a_full_dev_shm_means_frames_not_a_crash(server, monkeypatch, capsys):
    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    before = _segments()
    with RemoteStore(server.address, "shared-full", 60, 4, params=PARAMS) as store:
        store.push(torch.tensor([1, 2]), torch.ones(2, 4))
        assert store.step == 1 and store._shared.segment is None
    assert "No space left on device" in capsys.readouterr().err
    assert _segments() == before


def test_a_checkpoint_between_get_and_push_changes_nothing(server):
    """Reads between a step's get and push (checkpoints, rows with momentum through the segment) must not
    feed the update."""
    n, d = 3000, 16
    gen = torch.Generator().manual_seed(8)
    local = LocalStore(n, d, params=PARAMS)
    with RemoteStore(server.address, "shared-checkpoint", n, d, params=PARAMS) as remote:
        for _ in range(3):
            ids = torch.randperm(n, generator=gen)[:500]
            grad = torch.randn(500, d, generator=gen)
            remote.state_dict()  # whole-matrix reads go as frames, the segment keeps its size
            remote.weights()
            remote.rows(ids)
            other = np.ascontiguousarray(torch.randperm(n, generator=gen)[:300].numpy())
            reply, _ = _request(remote, Op.GET_ROWS, [other], dtype=DType.FLOAT32, rows=300, cols=d,
                                flags=FLAG_SHARED | FLAG_MOMENTUM)  # overwrites the reply region
            assert reply.flags & FLAG_SHARED
            remote.push(ids, grad)
            local.push(ids, grad)
        assert remote._shared.segment is not None
        assert remote._shared.segment.reply_bytes < 500 * d * 4 * 2  # bulk reads did not grow the segment
        assert torch.equal(remote.weights(), local.weight)


def test_a_dropped_client_still_reads_over_frames(tmp_path):
    from dcs_cli.paramserver.launcher import start_background

    with start_background("tcp://127.0.0.1:*", heartbeat_timeout=0.3) as srv:
        store = RemoteStore(srv.address, "shared-dropped", 50, 4, params=PARAMS, heartbeat=False)
        try:
            w = store.rows(torch.tensor([1, 2]))[0]
            assert store._shared.segment is not None
            time.sleep(2.0)  # silent (any request would count as a sign of life) well past the timeout
            assert store.stats()["clients_dropped"] == 1, srv.log()
            assert torch.equal(store.rows(torch.tensor([1, 2]))[0], w)
            with pytest.raises(ServerError, match="register again"):
                store.push(torch.tensor([1]), torch.ones(1, 4))
        finally:
            store.close()


def test_attach_refuses_files_other_users_could_reach(server):
    with RemoteStore(server.address, "shared-modes", 40, 4, shared_memory=False) as store:
        seg = shm.SharedSegment.create(256, 256)
        extra = shm.SHM_DIR / f"dcs-ps-{'1' * 32}"
        try:
            os.chmod(shm.SHM_DIR / seg.name, 0o644)
            spec = {"name": seg.name, "reply_bytes": 256, "request_bytes": 256}
            with pytest.raises(ServerError, match="mode 644"):
                _request(store, Op.ATTACH, [json_frame(spec)], dtype=DType.JSON)
            os.chmod(shm.SHM_DIR / seg.name, 0o600)
            os.link(shm.SHM_DIR / seg.name, extra)
            with pytest.raises(ServerError, match="one link"):
                _request(store, Op.ATTACH, [json_frame(spec)], dtype=DType.JSON)
            extra.unlink()
            _request(store, Op.ATTACH, [json_frame(spec)], dtype=DType.JSON)
            assert not (shm.SHM_DIR / seg.name).exists()  # the server unlinks what it mapped
        finally:
            extra.unlink(missing_ok=True)
            seg.unlink()
