"""Load through the server for ``corral bench``: N clients for a while, and their latencies.

aiohttp clients send one pre-encoded binary V2 body per batch size, so a client's own
cost is a socket write, not JSON. The same model called directly is measured by
``corral.engines.onnx.measure``, in its own process; the difference is the server's cost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from corral.latency import Measured
from corral.protocol import tensors
from corral.protocol.v2 import HEADER_LENGTH


async def _through_server(
    url: str,
    body: bytes,
    header_length: int,
    headers: Mapping[str, str],
    measured: Measured,
    duration: float | None,
) -> None:
    """Clients send until ``duration`` is up; with None, one request each."""
    import aiohttp

    send_headers = {
        **headers,
        HEADER_LENGTH: str(header_length),
        "Content-Type": "application/octet-stream",
    }
    connector = aiohttp.TCPConnector(limit=measured.concurrency)
    timeout = aiohttp.ClientTimeout(total=max((duration or 0) * 4, 300))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            once = duration is None
            while once or time.perf_counter() < deadline:
                once = False
                began = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=send_headers) as reply:
                        content = await reply.read()
                        status = reply.status
                except aiohttp.ClientError as exc:
                    measured.failed(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.05)
                    continue
                if status == 200:
                    measured.latencies.append(time.perf_counter() - began)
                else:
                    measured.failed(f"{status}: {content[:300].decode(errors='replace')}")

        started = time.perf_counter()
        deadline = started + (duration or 0)
        await asyncio.gather(*(client() for _ in range(measured.concurrency)))
        measured.seconds = time.perf_counter() - started


def through_server(
    url: str,
    inputs: Mapping[str, np.ndarray[Any, Any]],
    concurrency: int,
    duration: float,
    headers: Mapping[str, str],
) -> Measured:
    """``concurrency`` clients sending ``inputs`` to a V2 infer ``url`` for ``duration``
    seconds, after one request that loads the model and warms the path."""
    batch = len(next(iter(inputs.values())))
    measured = Measured("server", batch, concurrency)
    body, header_length = tensors.encode_request(inputs)
    warmup = Measured("server", batch, 1)
    asyncio.run(_through_server(url, body, header_length, headers, warmup, None))
    if warmup.errors:  # the request itself is refused: no point in more of them
        measured.failed(warmup.first_error or "refused")
        return measured
    asyncio.run(_through_server(url, body, header_length, headers, measured, duration))
    return measured
