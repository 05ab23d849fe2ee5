"""A TCP proxy that a test can cut: every connection dropped, new ones refused, until restored."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

log = logging.getLogger(__name__)


class TcpProxy:
    """Forwards connections on ``listen`` (host, port) to ``target``, byte for byte.

    :meth:`cut` stops listening (new connections are refused) and aborts every open one, as
    when a network path goes away; :meth:`restore` listens again on the same port.
    """

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self._listen = listen
        self._target = target
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self.accepted = 0

    @property
    def address(self) -> str:
        return f"{self._listen[0]}:{self._listen[1]}"

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rebind while old sockets linger
        sock.bind(self._listen)
        self._server = await asyncio.start_server(self._handle, sock=sock)

    async def cut(self) -> int:
        """Refuse new connections and abort the open ones; returns how many were aborted."""
        if self._server is not None:
            self._server.close()
            self._server = None
        aborted = len(self._connections)
        for writer in list(self._connections):
            writer.transport.abort()
        self._connections.clear()
        return aborted

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        self.accepted += 1
        self._connections.update((client_writer, upstream_writer))
        for source, sink in ((client_reader, upstream_writer), (upstream_reader, client_writer)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy until EOF or an error on either side, then close both directions' writer."""
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._connections.discard(sink)
            sink.transport.abort()  # the other pipe then ends too
            with contextlib.suppress(Exception):
                await sink.wait_closed()
