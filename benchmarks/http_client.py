"""A minimal keep-alive HTTP/1.1 client for the load generators of the serving benchmarks.

The load generator shares the machine's cores with the node it measures, so it must cost as
little CPU as possible: httpx costs ~1-2 ms of CPU a request, and at 3x capacity on a 2-core
machine it alone took a core and fell seconds behind its schedule (measured in
benchmarks/overload.py: 42 of 284 requests/s sent), so the benchmark measured its own client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping


class Connection:
    """One keep-alive HTTP/1.1 connection on loopback."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def request(self, raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        """Send one raw request (see :func:`raw_request`); (status, lower-cased headers, body)."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:] if ln)}
        return status, headers, await self.reader.readexactly(int(headers[b"content-length"]))

    def close(self) -> None:
        self.writer.close()


def raw_request(
    method: str,
    path: str,
    port: int,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
) -> bytes:
    """The bytes of one request, built once and sent many times (``headers``: e.g. the bearer token)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    if body:
        head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body
