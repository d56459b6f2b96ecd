"""A cap on the memory the server's socket may reserve for messages still being received.

The server loop polls `budget.monitor` next to its socket and calls `budget.poll()` when it is readable.

ZeroMQ allocates a frame's whole announced size as soon as its length arrives, before its bytes do, and
keeps a message's frames until its last one. Each connection can therefore hold about one maximal frame
(`paramserver.max_frame_bytes`, ZeroMQ's MAXMSGSIZE; larger frames drop the connection) in flight, and
the total is capped by keeping at most `max_inflight_bytes // max_frame_bytes` connections (128 by
default; a client opens two, requests and heartbeats): the ones accepted beyond that are shut down at
once, so whoever opens them only loses them.

>>> ctx = zmq.Context()
>>> sock = ctx.socket(zmq.ROUTER)
>>> budget = ConnectionBudget(sock, max_inflight_bytes=4 << 30, max_frame_bytes=128 << 20)
>>> budget.limit   # connections kept open at once
32
>>> budget.close(); sock.close(); ctx.term()
"""

from __future__ import annotations

import os
import socket

import zmq
from zmq.utils.monitor import parse_monitor_message

from dcs_cli.console import warn

EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED


class ConnectionBudget:
    """Counts the socket's accepted connections (from its monitor) and closes those past the limit."""

    def __init__(self, sock: zmq.Socket, max_inflight_bytes: int, max_frame_bytes: int):
        self.limit = max(1, max_inflight_bytes // max_frame_bytes)
        self.monitor = sock.get_monitor_socket(EVENTS)
        self.sock = sock
        self.open: set[int] = set()
        self.refused = 0

    def poll(self) -> None:
        """Handle the queued connection events (call when the monitor socket is readable)."""
        events = []
        while True:
            try:
                events.append(parse_monitor_message(self.monitor.recv_multipart(zmq.NOBLOCK)))
            except zmq.Again:
                break
        gone_later = set()
        for event in reversed(events):  # a descriptor closed later in this batch may already be reused
            if event["event"] == zmq.EVENT_DISCONNECTED:
                gone_later.add(event["value"])
            elif event["event"] == zmq.EVENT_ACCEPTED:
                event["gone_later"] = event["value"] in gone_later
        for event in events:
            fd = event["value"]
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.open.discard(fd)
            elif len(self.open) < self.limit:
                self.open.add(fd)
            elif not event["gone_later"]:
                self._refuse(fd)

    def _refuse(self, fd: int) -> None:
        self.refused += 1
        if self.refused == 1 or self.refused % 100 == 0:
            warn(f"connection refused: {self.limit} are open, the most paramserver.max_inflight_bytes allows "
                 f"at paramserver.max_frame_bytes each (each client opens 2); raise "
                 f"paramserver.max_inflight_bytes (--set paramserver.max_inflight_bytes=BYTES) to serve more "
                 f"clients ({self.refused} refused so far)")
        try:
            peer = socket.socket(fileno=os.dup(fd))  # ZeroMQ owns `fd`: a shutdown ends the connection
        except OSError:
            return
        try:
            if peer.type == socket.SOCK_STREAM:
                peer.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            peer.close()

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close()
