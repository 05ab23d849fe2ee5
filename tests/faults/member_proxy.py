"""A Kafka TCP proxy that cuts one member off: its connections, told apart by the ``client_id`` of
the first request on each, are aborted and refused, while every other client keeps its path."""

from __future__ import annotations

import asyncio
import struct

from tcp_proxy import TcpProxy


class MemberProxy(TcpProxy):
    """:class:`TcpProxy` that also reads each connection's first Kafka request header and can
    :meth:`cut_member` / :meth:`restore_member` by client id (a network partition of one host)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        super().__init__(listen, target)
        self._members: dict[asyncio.StreamWriter, str] = {}
        self._cut: set[str] = set()
        self.refused = 0

    async def cut_member(self, client_id: str) -> int:
        """Abort ``client_id``'s connections and refuse its new ones; returns how many were aborted."""
        self._cut.add(client_id)
        mine = [writer for writer, member in self._members.items() if member == client_id]
        for writer in mine:
            writer.transport.abort()
        return len(mine)

    def restore_member(self, client_id: str) -> None:
        self._cut.discard(client_id)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            # Request: int32 size, then int16 api_key, int16 api_version, int32 correlation_id,
            # and the client id as an int16-length string (in every header version).
            size = struct.unpack(">i", await client_reader.readexactly(4))[0]
            request = await client_reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            client_writer.transport.abort()
            return
        (length,) = struct.unpack(">h", request[8:10])
        member = request[10 : 10 + length].decode("utf-8", "replace") if length > 0 else ""
        if member in self._cut:
            self.refused += 1
            client_writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        upstream_writer.write(struct.pack(">i", size) + request)
        self.accepted += 1
        self._connections.update((client_writer, upstream_writer))
        self._members[client_writer] = member
        self._members[upstream_writer] = member
        for source, sink in ((client_reader, upstream_writer), (upstream_reader, client_writer)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            await super()._pipe(source, sink)
        finally:
            self._members.pop(sink, None)
