"""The synchronous-SGD barrier of each matrix: who is in it, when its step is applied, who is dropped.

A PUSH for step t is held (its reply deferred) until every registered client of the matrix has pushed
for t; `complete_step` then sums the gradients per row, applies them once and answers all held pushes.
A client silent for longer than `heartbeat_timeout` (and not itself waiting in the barrier) is dropped by
`drop_silent`, so the others carry on without it; the answer to a held push counts as hearing from its
client, so one without heartbeats is not dropped for the time it waited.
"""

from __future__ import annotations

import time

from dcs_cli.console import warn
from dcs_cli.paramserver.matrix import ServedMatrix
from dcs_cli.paramserver.state import ServerState


def leave(server: ServerState, client_id: int, m: ServedMatrix) -> None:
    """Take `client_id` out of the barrier of `m` (and forget the client once it is in none)."""
    m.members.discard(client_id)
    m.forget(client_id)
    client = server.clients.get(client_id)
    if client is not None:
        client.matrices.discard(m.matrix_id)
        if not client.matrices:
            del server.clients[client_id]


def complete_step(server: ServerState, m: ServedMatrix) -> None:
    """Apply the step of `m` and answer every held push, if every member has pushed for it."""
    if not m.barrier_ready():
        return
    waiters, m.waiters = m.waiters, []
    now = time.monotonic()
    for _, req in waiters:  # they were silent while held here; the clock starts again at the answer
        client = server.clients.get(req.client_id)
        if client is not None:
            client.last_seen = now
    try:
        m.apply()
    except Exception as exc:  # every client held in the barrier hears of it; none is left waiting
        m.pending.clear()
        m.changed()
        warn(f"internal error applying step {m.step} of '{m.spec.name}': {exc!r}")
        for identity, req in waiters:
            server.error(identity, req, f"internal server error applying step {m.step}: "
                                        f"{exc.__class__.__name__}: {exc}; the step was not completed")
        return
    server.counters["steps_applied"] += 1
    for identity, req in waiters:
        server.reply(identity, req, step=m.step)


def drop_silent(server: ServerState, now: float) -> None:
    """Drop the clients silent for longer than `heartbeat_timeout` from every barrier they are in."""
    timeout = server.cfg.heartbeat_timeout
    for client_id, client in list(server.clients.items()):
        if now - client.last_seen <= timeout:
            continue
        waiting = [m for m in server.matrices if client_id in m.pending]
        if waiting:  # it pushed and waits for the others: silence is expected, not a fault
            continue
        affected = [server.matrices[i] for i in client.matrices]
        warn(
            f"client {client_id:x} silent for {now - client.last_seen:.1f}s > {timeout}s: "
            f"dropped from the barrier of {', '.join(repr(m.spec.name) for m in affected)}"
        )
        server.counters["clients_dropped"] += 1
        for m in affected:
            leave(server, client_id, m)
        for m in affected:
            complete_step(server, m)
