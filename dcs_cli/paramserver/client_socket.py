"""A client's socket to the server: one DEALER socket, requests matched to replies, a timeout on each.

`request(header, frames, timeout)` returns the reply's header and frames. An error reply raises
`ServerError` with the server's reason; no reply in time raises `RequestTimeout` and replaces the socket,
so the unanswered request is never sent late. Replies to earlier, timed-out requests are recognised by
their request id and dropped.

>>> ctx = zmq.Context()
>>> sock = ClientSocket(ctx, "inproc://nobody", token=None, client_id=1)   # no server there
>>> try:
...     sock.request(Header(op=Op.STATS), timeout=0.01)
... except RequestTimeout as exc:
...     print(exc)
no reply from the paramserver at inproc://nobody within 0.01s (STATS); is `dcs paramserver` running there?
>>> sock.close(); ctx.term()
"""

from __future__ import annotations

import itertools

import zmq

from dcs_cli.errors import ServerError
from dcs_cli.paramserver.protocol import STATUS_ERROR, Header, Op, ProtocolError, decode_header, parse_json


class RequestTimeout(ServerError):
    """No reply in time: the request may still be served later, so nothing it refers to may be reused."""


class ClientSocket:
    """One DEALER socket with request/reply matching by request id and a per-request timeout."""

    def __init__(self, ctx: zmq.Context, address: str, token: bytes | None, client_id: int):
        self.ctx, self.address, self.token, self.client_id = ctx, address, token, client_id
        self.request_ids = itertools.count(1)
        self.sock = self._open()

    def _open(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        return sock

    def request(self, header: Header, frames: list = (), timeout: float = 60.0) -> tuple[Header, list]:
        header.request_id = next(self.request_ids)
        header.client_id = self.client_id
        self.sock.send_multipart([header.pack(self.token), *frames], copy=False)
        deadline_ms = int(timeout * 1000)
        while True:
            if not self.sock.poll(deadline_ms):
                # the request may still sit in the queue; a fresh socket makes sure it is never sent late
                self.sock.close()
                self.sock = self._open()
                raise RequestTimeout(
                    f"no reply from the paramserver at {self.address} within {timeout:g}s "
                    f"({Op(header.op).name}); is `dcs paramserver` running there?"
                )
            reply = self.sock.recv_multipart(copy=False)
            reply_header = self._decode(reply[0].buffer)
            if reply_header.request_id != header.request_id:
                continue  # a late answer to an earlier request that timed out
            if reply_header.status == STATUS_ERROR:
                message = parse_json(reply[1].buffer).get("error", "?") if len(reply) > 1 else "?"
                raise ServerError(f"paramserver {self.address} refused {Op(header.op).name}: {message}")
            return reply_header, reply[1:]

    def _decode(self, buf) -> Header:
        try:
            return decode_header(buf, self.token, reply=True)
        except ProtocolError as exc:
            try:  # an unauthenticated error reply still explains itself (typically: our token is wrong)
                header = decode_header(buf, None, reply=True)
            except ProtocolError:
                raise ServerError(f"paramserver {self.address}: unreadable reply ({exc})") from None
            if header.status != STATUS_ERROR:
                raise ServerError(
                    f"paramserver {self.address}: reply failed authentication ({exc})"
                ) from None
            return header

    def close(self) -> None:
        self.sock.close()
