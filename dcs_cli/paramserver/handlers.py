"""The request handlers of the parameter server: one function per op, found by `HANDLERS[header.op]`.

Each handler is `handler(server, identity, header, frames)`: it validates the request (validate.py),
changes the `ServerState` and answers with `server.reply`; a PUSH is answered later, when its step is
applied (barrier.py). A bad request raises `ProtocolError`, which the loop (server.py) turns into an error
reply.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from dcs_cli.console import info
from dcs_cli.paramserver.barrier import complete_step, leave
from dcs_cli.paramserver.matrix import MatrixSpec, PendingPush, ServedMatrix, check_step, optim_from_dict
from dcs_cli.paramserver.protocol import (
    FLAG_CURRENT,
    FLAG_MOMENTUM,
    FLAG_SHARED,
    DType,
    Header,
    Op,
    ProtocolError,
    json_frame,
    parse_json,
    row_arrays,
)
from dcs_cli.paramserver.shm import SegmentError, SharedSegment, region_frames
from dcs_cli.paramserver.state import ClientInfo, ServerState
from dcs_cli.paramserver.validate import check_row_request, expect_frames, row_ids, row_values


def create(server: ServerState, identity, header: Header, frames) -> None:
    expect_frames(frames, 1, "CREATE")
    spec = MatrixSpec.from_dict(parse_json(frames[0].buffer))
    for m in server.matrices:
        if m.spec.name == spec.name:
            if m.spec != spec:
                raise ProtocolError(
                    f"CREATE: matrix '{spec.name}' exists with spec {m.spec.to_dict()}, "
                    f"not {spec.to_dict()}; use another name or the same spec"
                )
            break
    else:
        m = ServedMatrix(
            len(server.matrices), spec, dataclasses.replace(server.default_params), workers=server.workers
        )
        server.matrices.append(m)
        info(f"created matrix '{spec.name}' {spec.num_classes}x{spec.dim} (id {m.matrix_id})")
    header.matrix = m.matrix_id
    server.reply(
        identity,
        header,
        [json_frame({"matrix": m.matrix_id, "step": m.step})],
        dtype=DType.JSON,
        step=m.step,
    )


def register(server: ServerState, identity, header: Header, frames) -> None:
    expect_frames(frames, 0, "REGISTER")
    m = server.matrix(header)
    client = server.clients.setdefault(header.client_id, ClientInfo(time.monotonic()))
    if m.matrix_id not in client.matrices:
        client.matrices.add(m.matrix_id)
        m.members.add(header.client_id)
        server.counters["clients_registered"] += 1
        info(f"client {header.client_id:x} joined '{m.spec.name}' ({len(m.members)} registered)")
    server.reply(
        identity,
        header,
        [json_frame({"step": m.step, "heartbeat_timeout": server.cfg.heartbeat_timeout,
                     "max_frame_bytes": server.cfg.max_frame_bytes})],
        dtype=DType.JSON,
        step=m.step,
    )


def unregister(server: ServerState, identity, header: Header, frames) -> None:
    expect_frames(frames, 0, "UNREGISTER")
    m = server.matrix(header)
    leave(server, header.client_id, m)
    info(f"client {header.client_id:x} left '{m.spec.name}' ({len(m.members)} registered)")
    server.reply(identity, header, step=m.step)
    complete_step(server, m)


def get_rows(server: ServerState, identity, header: Header, frames) -> None:
    m = server.matrix(header)
    check_row_request(m, header, "GET_ROWS")
    expect_frames(frames, 1, "GET_ROWS")
    ids = row_ids(m, header, frames[0], unique=False, op="GET_ROWS")
    if header.flags & FLAG_CURRENT:
        m.catch_up(ids)
    ids_np = ids.numpy()
    with_momentum, shared = bool(header.flags & FLAG_MOMENTUM), bool(header.flags & FLAG_SHARED)
    client = server.clients.get(header.client_id)
    shared = shared and client is not None and client.segment is not None  # else: frames (flag cleared)
    out = None
    if shared:  # gathered straight into the client's segment; the reply carries no arrays
        segment = client.segment
        try:
            specs = row_arrays("reply", len(ids_np), m.spec.dim, m.spec.bias, with_momentum)
            out = segment.arrays(segment.reply, specs)
        except SegmentError as exc:
            raise ProtocolError(f"GET_ROWS: reply {exc}; ATTACH a larger segment") from None
    out = m.gather(ids_np, with_momentum, out)
    if not with_momentum and not shared:  # the segment's copy is the client's to rewrite: not kept
        m.remember_sent(header.client_id, ids_np, out[0])
    server.counters["rows_read"] += len(ids_np)
    server.reply(
        identity,
        header,
        [] if shared else out,
        dtype=DType.FLOAT32,
        rows=len(ids_np),
        cols=m.spec.dim,
        step=m.step,
        flags=header.flags if shared else header.flags & ~FLAG_SHARED,
    )


def push(server: ServerState, identity, header: Header, frames) -> None:
    m = server.matrix(header)
    check_row_request(m, header, "PUSH")
    if header.client_id not in m.members:
        raise ProtocolError(
            f"PUSH: client {header.client_id:x} is not registered for '{m.spec.name}' "
            "(dropped after the heartbeat timeout?); register again"
        )
    if header.step != m.step:
        raise ProtocolError(
            f"PUSH: gradient for step {header.step} but '{m.spec.name}' is at step {m.step}"
        )
    if header.flags & FLAG_SHARED:
        expect_frames(frames, 0, "PUSH")
        segment = server.clients[header.client_id].segment  # a member is a known client
        if segment is None:
            raise ProtocolError("PUSH: FLAG_SHARED but no shared-memory segment is attached; ATTACH first")
        try:
            specs = row_arrays("push", header.rows, m.spec.dim, m.spec.bias)
            frames = region_frames(segment.request, specs)
        except SegmentError as exc:
            raise ProtocolError(f"PUSH: request {exc}; ATTACH a larger segment") from None
    expect_frames(frames, 3 if m.spec.bias else 2, "PUSH")
    ids = row_ids(m, header, frames[0], unique=True, op="PUSH")
    grad_w = row_values(m, header, frames[1], m.spec.dim, "PUSH", "weight gradient")
    grad_b = row_values(m, header, frames[2], None, "PUSH", "bias gradient") if m.spec.bias else None
    m.add_push(header.client_id, PendingPush(ids, grad_w, grad_b, keepalive=tuple(frames)))
    m.waiters.append((identity, header))
    server.counters["rows_pushed"] += len(ids)
    complete_step(server, m)


def set_rows(server: ServerState, identity, header: Header, frames) -> None:
    m = server.matrix(header)
    check_row_request(m, header, "SET_ROWS")
    with_momentum = bool(header.flags & FLAG_MOMENTUM)
    expect_frames(frames, 1 + (1 + with_momentum) * (1 + m.spec.bias), "SET_ROWS")
    ids = row_ids(m, header, frames[0], unique=True, op="SET_ROWS")
    values = iter(frames[1:])
    updates = [(m.weight, row_values(m, header, next(values), m.spec.dim, "SET_ROWS", "weights"))]
    if with_momentum:
        updates.append(
            (m.momentum, row_values(m, header, next(values), m.spec.dim, "SET_ROWS", "momentum"))
        )
    if m.spec.bias:
        updates.append((m.bias, row_values(m, header, next(values), None, "SET_ROWS", "bias")))
        if with_momentum:
            updates.append(
                (
                    m.bias_momentum,
                    row_values(m, header, next(values), None, "SET_ROWS", "bias momentum"),
                )
            )
    for target, source in updates:  # all validated first: a refused request changes nothing
        target.index_copy_(0, ids, source)
    if m.clock is not None:  # written rows are as of this step: nothing of theirs to catch up
        m.clock.reset(m.step, ids)
    m.changed()
    server.counters["rows_written"] += len(ids)
    server.reply(identity, header, step=m.step)


def attach(server: ServerState, identity, header: Header, frames) -> None:
    expect_frames(frames, 1, "ATTACH")
    client = server.clients.get(header.client_id)
    if client is None:
        raise ProtocolError(f"ATTACH: client {header.client_id:x} is not registered; REGISTER first")
    spec = parse_json(frames[0].buffer)
    if set(spec) != {"name", "reply_bytes", "request_bytes"}:
        raise ProtocolError("ATTACH: the frame must hold exactly name, reply_bytes and request_bytes")
    try:
        client.segment = SharedSegment.open(spec["name"], spec["reply_bytes"], spec["request_bytes"])
    except SegmentError as exc:
        raise ProtocolError(f"ATTACH: {exc}") from None
    server.reply(identity, header)


def get_optim(server: ServerState, identity, header: Header, frames) -> None:
    expect_frames(frames, 0, "GET_OPTIM")
    m = server.matrix(header)
    server.reply(
        identity, header, [json_frame(dataclasses.asdict(m.params))], dtype=DType.JSON, step=m.step
    )


def set_optim(server: ServerState, identity, header: Header, frames) -> None:
    expect_frames(frames, 1, "SET_OPTIM")
    m = server.matrix(header)
    m.params = optim_from_dict(parse_json(frames[0].buffer))
    server.reply(identity, header, step=m.step)


def set_step(server: ServerState, identity, header: Header, frames) -> None:
    expect_frames(frames, 0, "SET_STEP")
    m = server.matrix(header)
    check_step(header.step, "SET_STEP")
    if m.pending:
        raise ProtocolError(f"SET_STEP: step {m.step} has pushes pending; set the step before training")
    m.settle()
    m.step = header.step
    if m.clock is not None:
        m.clock.reset(m.step)
    server.reply(identity, header, step=m.step)


def snapshot(server: ServerState, identity, header: Header, frames) -> None:
    expect_frames(frames, 0, "SNAPSHOT")
    if not server.cfg.snapshot_dir:
        raise ProtocolError("SNAPSHOT: this server has no snapshot folder (start it with --snapshot-dir)")
    path = server.write_snapshot("requested")
    server.reply(identity, header, [json_frame({"path": str(path)})], dtype=DType.JSON)


def stats(server: ServerState, identity, header: Header, frames) -> None:
    expect_frames(frames, 0, "STATS")
    server.reply(identity, header, [json_frame(server.stats())], dtype=DType.JSON)


def shutdown(server: ServerState, identity, header: Header, frames) -> None:
    expect_frames(frames, 0, "SHUTDOWN")
    info("shutdown requested by a client")
    server.stop_requested = True
    server.reply(identity, header)


def heartbeat(server: ServerState, identity, header: Header, frames) -> None:
    expect_frames(frames, 0, "HEARTBEAT")
    if header.client_id not in server.clients:
        raise ProtocolError(f"HEARTBEAT: client {header.client_id:x} is not registered (dropped?)")
    server.reply(identity, header)


Handler = Callable[[ServerState, bytes, Header, list], None]

HANDLERS: dict[int, Handler] = {
    Op.REGISTER: register,
    Op.UNREGISTER: unregister,
    Op.CREATE: create,
    Op.GET_ROWS: get_rows,
    Op.PUSH: push,
    Op.SET_ROWS: set_rows,
    Op.GET_OPTIM: get_optim,
    Op.SET_OPTIM: set_optim,
    Op.SNAPSHOT: snapshot,
    Op.STATS: stats,
    Op.SHUTDOWN: shutdown,
    Op.HEARTBEAT: heartbeat,
    Op.SET_STEP: set_step,
    Op.ATTACH: attach,
}
