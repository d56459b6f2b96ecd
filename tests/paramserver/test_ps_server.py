"""Against a real server process on a free loopback port (see conftest.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import zmq

from dcs_cli.errors import ServerError
from dcs_cli.paramserver.client import RemoteStore
from dcs_cli.paramserver.launcher import start_background
from dcs_cli.paramserver.protocol import STATUS_ERROR, DType, Header, Op, decode_header
from dcs_cli.paramserver.snapshot import read_snapshot
from dcs_cli.selection.local_store import LocalStore
from dcs_cli.selection.row_update import sgd_rows_
from dcs_cli.selection.store import OptimParams

from .conftest import HEARTBEAT_TIMEOUT

PARAMS = OptimParams(lr=0.05, momentum=0.9, weight_decay=1e-3)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-memory", "frames"])
def test_one_client_follows_local_store_exactly(server, shared):
    n, d, steps = 500, 16, 12
    gen = torch.Generator().manual_seed(0)
    local = LocalStore(n, d, bias=True, init_std=0.1, seed=3, params=PARAMS)
    dense_w, dense_m = local.weight.clone(), torch.zeros(n, d)
    with RemoteStore(
        server.address, f"trajectory-{shared}", n, d, bias=True, init_std=0.1, seed=3, params=PARAMS,
        shared_memory=shared,
    ) as remote:
        assert torch.equal(remote.weights(), local.weight)  # same seeded init as LocalStore
        for step in range(steps):
            ids = torch.randperm(n, generator=gen)[:60]
            gw, gb = torch.randn(60, d, generator=gen), torch.randn(60, generator=gen)
            w_remote, b_remote = remote.rows(ids)
            w_local, b_local = local.rows(ids)
            assert torch.equal(w_remote, w_local) and torch.equal(b_remote, b_local)
            remote.push(ids, gw, gb)
            local.push(ids, gw, gb)
            sgd_rows_(dense_w, dense_m, ids, gw, PARAMS)
            if step == 5:
                PARAMS2 = OptimParams(lr=0.01, momentum=0.5, weight_decay=0.0)  # the trainer's LR schedule
                remote.set_optim(PARAMS2)
                local.set_optim(PARAMS2)
                assert remote.get_optim() == PARAMS2
        state = remote.state_dict()
        assert (remote._shared.segment is not None) == shared
        assert state["step"] == steps == remote.step
        assert torch.equal(state["weight"], local.weight) and torch.equal(state["momentum"], local.momentum)
        assert torch.equal(state["bias"], local.bias) and torch.equal(
            state["bias_momentum"], local.bias_momentum
        )
    # the dense reference diverges from lazy rows only after the optimiser change, so check before it
    fresh = LocalStore(n, d, bias=True, init_std=0.1, seed=3, params=PARAMS)
    fresh.load_state_dict(state)  # a RemoteStore state loads into LocalStore (same keys)
    assert torch.equal(fresh.weight, local.weight)


def test_one_client_matches_dense_sgd_rows(server):
    n, d = 100, 8
    gen = torch.Generator().manual_seed(1)
    with RemoteStore(server.address, "dense", n, d, seed=1, params=PARAMS, catch_up=False) as remote:
        w, m = remote.weights().clone(), torch.zeros(n, d)
        for _ in range(5):
            ids = torch.randperm(n, generator=gen)[:30]
            g = torch.randn(30, d, generator=gen)
            remote.push(ids, g)
            sgd_rows_(w, m, ids, g, PARAMS)
        state = remote.state_dict()
    assert torch.equal(state["weight"], w) and torch.equal(state["momentum"], m)


def test_current_rows_have_caught_up_what_they_sat_out(server):
    """GET_ROWS with FLAG_CURRENT (`current_rows`, what a training step reads) returns the rows dense SGD would
    hold, as the in-process store does; `rows` returns them as stored."""
    n, d = 50, 4
    params = OptimParams(lr=0.1, momentum=0.9, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(3)
    with RemoteStore(server.address, "current", n, d, seed=2, params=params, catch_up=True) as remote:
        local = LocalStore(n, d, seed=2, params=params, catch_up=True)
        for t in range(6):
            lr = 0.02 * (t + 1)  # a warm-up: each skipped step is caught up at its own LR, on both sides
            remote.set_lr(lr)
            local.set_lr(lr)
            ids = torch.randperm(n, generator=gen)[:10]
            g = torch.randn(10, d, generator=gen)
            remote.push(ids, g)
            local.push(ids, g)
        read = torch.arange(n)
        stored = remote.rows(read)[0]
        torch.testing.assert_close(remote.current_rows(read)[0], local.current_rows(read)[0])
        assert not torch.allclose(stored, local.current_rows(read)[0])  # the stored rows had fallen behind


@pytest.mark.parametrize("catch_up", [False, True])
def test_two_clients_overlapping_rows_are_summed(server, catch_up):
    """Rows pushed by one client or by both are updated once per step with the summed gradient; with
    catch-up every row follows dense SGD (a step marks the clients' own rows and the shared ones apart)."""
    n, d, steps = 200, 8, 4
    rng = np.random.default_rng(2)
    name = f"two-{catch_up}"
    a = RemoteStore(server.address, name, n, d, params=PARAMS, catch_up=catch_up)
    b = RemoteStore(server.address, name, n, d, catch_up=catch_up)
    try:
        w = a.weights().numpy().astype(np.float32)
        v = np.zeros_like(w)
        with ThreadPoolExecutor(2) as pool:
            for _ in range(steps):
                ids_a, ids_b = rng.choice(n, 80, replace=False), rng.choice(n, 80, replace=False)
                assert len(np.intersect1d(ids_a, ids_b)) > 0
                ga = rng.standard_normal((80, d)).astype(np.float32)
                gb = rng.standard_normal((80, d)).astype(np.float32)
                fa = pool.submit(a.push, torch.from_numpy(ids_a), torch.from_numpy(ga))
                time.sleep(0.05)
                assert not fa.done()  # waits for the other client
                fb = pool.submit(b.push, torch.from_numpy(ids_b), torch.from_numpy(gb))
                fa.result(timeout=30), fb.result(timeout=30)
                g = np.zeros_like(w)
                np.add.at(g, ids_a, ga)
                np.add.at(g, ids_b, gb)
                touched = np.union1d(ids_a, ids_b) if not catch_up else np.arange(n)  # dense SGD: every row
                gt = g[touched] + PARAMS.weight_decay * w[touched]
                v[touched] = PARAMS.momentum * v[touched] + gt
                w[touched] -= PARAMS.lr * v[touched]
        assert a.step == b.step == steps
        state = a.state_dict()  # (every row caught up to the present step first)
        np.testing.assert_allclose(state["weight"].numpy(), w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state["momentum"].numpy(), v, rtol=1e-5, atol=1e-6)
    finally:
        a.close()
        b.close()


def test_invalid_requests_are_refused_and_change_nothing(server):
    with RemoteStore(server.address, "valid", 50, 4, params=PARAMS) as store:
        before = store.weights().clone()
        with pytest.raises(ServerError, match="NaN or inf"):
            store.push(torch.tensor([1, 2]), torch.tensor([[1.0, float("nan"), 0, 0], [0, 0, 0, 0]]))
        with pytest.raises(ServerError, match="out of range"):
            store.push(torch.tensor([1, 50]), torch.ones(2, 4))
        with pytest.raises(ServerError, match="unique"):
            store.push(torch.tensor([3, 3]), torch.ones(2, 4))
        with pytest.raises(ServerError, match="out of range"):
            store.rows(torch.tensor([-1]))
        store.step += 1
        with pytest.raises(ServerError, match="is at step 0"):
            store.push(torch.tensor([1]), torch.ones(1, 4))
        store.step -= 1
        with pytest.raises(ServerError, match="exists with spec"):
            RemoteStore(server.address, "valid", 51, 4)
        assert torch.equal(store.weights(), before)
        store.push(torch.tensor([1]), torch.ones(1, 4))  # and it still works
        assert store.step == 1


def test_no_server_gives_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ServerError, match="no reply from the paramserver"):
        RemoteStore(f"tcp://127.0.0.1:{port}", "x", 10, 2, timeout=0.5)
    assert time.monotonic() - start < 5


CLIENT_SCRIPT = """
import sys, torch
from dcs_cli.paramserver.client import RemoteStore
store = RemoteStore(sys.argv[1], "victim", 100, 4)
print("registered", flush=True)
sys.stdin.readline()
store.push(torch.tensor([1, 2]), torch.ones(2, 4))
print("pushed", flush=True)
sys.stdin.readline()  # blocks until the test kills this process
"""


def test_killed_client_is_dropped_and_the_other_proceeds(server):
    params = OptimParams(lr=0.1, momentum=0.0, weight_decay=0.0)
    survivor = RemoteStore(server.address, "victim", 100, 4, params=params)
    victim = subprocess.Popen(
        [sys.executable, "-c", CLIENT_SCRIPT, server.address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert victim.stdout.readline().strip() == "registered"
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(survivor.push, torch.tensor([2, 3]), torch.ones(2, 4))
            victim.stdin.write("go\n")
            victim.stdin.flush()
            assert victim.stdout.readline().strip() == "pushed"
            first.result(timeout=30)
            row2 = survivor.rows(torch.tensor([2]))[0]

            second = pool.submit(survivor.push, torch.tensor([2]), torch.ones(1, 4))
            time.sleep(2 * HEARTBEAT_TIMEOUT)
            assert not second.done()  # the victim is alive (heartbeats), so the barrier holds
            victim.kill()
            victim.wait()
            start = time.monotonic()
            second.result(timeout=10 * HEARTBEAT_TIMEOUT)
            assert time.monotonic() - start < 5 * HEARTBEAT_TIMEOUT
        assert survivor.step == 2
        assert torch.allclose(survivor.rows(torch.tensor([2]))[0], row2 - 0.1)
        assert survivor.stats()["clients_dropped"] >= 1
        survivor.push(torch.tensor([5]), torch.ones(1, 4))  # alone now: no waiting
        assert survivor.step == 3
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        survivor.close()


def test_garbage_messages_get_error_replies_and_leave_the_matrix_alone(server):
    store = RemoteStore(server.address, "fuzz", 300, 8)
    before = store.weights().clone()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.address)
    rng = np.random.default_rng(0)
    valid = Header(op=Op.SET_ROWS, matrix=store.matrix_id, client_id=99, rows=2, cols=8, dtype=DType.FLOAT32)

    def message(i: int) -> list[bytes]:
        kind = i % 8
        junk = [rng.bytes(int(rng.integers(0, 300))) for _ in range(int(rng.integers(0, 3)))]
        if kind == 0:  # random bytes
            return [rng.bytes(int(rng.integers(0, 200)))] + junk
        if kind == 1:  # truncated header
            return [valid.pack(None)[: int(rng.integers(0, 72))]] + junk
        if kind == 2:  # random op and fields, random payload frames
            h = Header(
                op=int(rng.integers(0, 256)),
                matrix=int(rng.integers(0, 3)),
                rows=int(rng.integers(0, 2**40)),
                cols=int(rng.integers(0, 300)),
                dtype=int(rng.integers(0, 256)),
                flags=int(rng.integers(0, 256)),  # FLAG_SHARED included: no segment is attached
                client_id=99,
            )
            return [h.pack(None), rng.bytes(int(rng.integers(1, 500)))] + junk
        if kind == 3:  # oversized frames
            h = Header(op=Op.SET_ROWS, matrix=store.matrix_id, rows=2**50, cols=8, dtype=DType.FLOAT32)
            return [h.pack(None), rng.bytes(1 << 20), rng.bytes(4 << 20)] if i % 80 == 3 else [h.pack(None)]
        ids = np.array([1, 2], dtype="<i8")
        rows = np.ones((2, 8), dtype="<f4")
        if kind == 4:  # NaN values
            rows[1, 3] = np.nan
            return [valid.pack(None), ids.tobytes(), rows.tobytes()]
        if kind == 5:  # ids out of range or duplicated
            bad = np.array([1, 300 + i] if i % 2 else [7, 7], dtype="<i8")
            return [valid.pack(None), bad.tobytes(), rows.tobytes()]
        if kind == 6:  # sizes that do not match the header
            return [valid.pack(None), ids.tobytes(), rows.tobytes()[: int(rng.integers(0, 63))]]
        # wrong dtype, or a push from a client that never registered
        h = Header(
            op=Op.PUSH if i % 2 else Op.SET_ROWS,
            matrix=store.matrix_id,
            client_id=99,
            rows=2,
            cols=8,
            dtype=DType.INT64 if i % 2 == 0 else DType.FLOAT32,
        )
        return [h.pack(None), ids.tobytes(), rows.tobytes()]

    errors = 0
    try:
        for i in range(1000):
            sock.send_multipart(message(i))
            assert sock.poll(10_000), f"no reply to garbage message {i}"
            reply = sock.recv_multipart()
            errors += decode_header(reply[0], None, reply=True).status == STATUS_ERROR
        assert errors == 1000
        assert torch.equal(store.weights(), before)
        assert store.stats()["errors"] >= 1000
        store.push(torch.tensor([1]), torch.ones(1, 8))
        assert store.step == 1
    finally:
        sock.close()
        ctx.term()
        store.close()


def test_snapshot_kill9_resume_restores_rows_momentum_and_step(tmp_path):
    snaps = tmp_path / "snaps"
    params = OptimParams(lr=0.1, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(4)
    first = start_background(snapshot_dir=str(snaps))
    try:
        with RemoteStore(first.address, "clf", 400, 8, bias=True, params=params) as store:
            for _ in range(3):
                ids = torch.randperm(400, generator=gen)[:50]
                store.push(ids, torch.randn(50, 8, generator=gen), torch.randn(50, generator=gen))
            path = store.snapshot()
            saved = store.state_dict()
            assert store.step == 3
    finally:
        assert first.kill() == -9
    second = start_background(snapshot_dir=str(snaps), resume=path)
    try:
        with RemoteStore(second.address, "clf", 400, 8, bias=True) as store:
            state = store.state_dict()
            assert store.step == 3 and state["optim"] == saved["optim"]
            for key in ("weight", "momentum", "bias", "bias_momentum"):
                assert torch.equal(state[key], saved[key]), key
            store.push(torch.tensor([0]), torch.ones(1, 8), torch.ones(1))
    finally:
        assert second.stop() == 0  # SIGTERM: final snapshot, exit 0
    (final,) = read_snapshot(path)
    assert final.step == 4  # the final snapshot holds the step pushed before SIGTERM


def test_wrong_or_missing_token_is_refused(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("correct horse battery staple\n")
    with start_background(token_file=str(token_file)) as srv:
        for token in ("wrong token value", None):
            with pytest.raises(ServerError, match="authentication failed"):
                RemoteStore(srv.address, "t", 10, 2, token=token, timeout=10)
        with RemoteStore(srv.address, "t", 10, 2, token="correct horse battery staple", timeout=10) as store:
            store.push(torch.tensor([1]), torch.ones(1, 2))
            assert store.stats()["errors"] == 2
