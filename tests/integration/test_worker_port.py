"""A worker's port taken by a stranger: the gateway must not take the stranger's
health answer for its own worker's (requests would go to someone else's server)."""

from __future__ import annotations

import asyncio
import http.server
import sys
import threading
from collections.abc import Iterator

import aiohttp
import pytest

from corral.errors import PortTaken
from corral.scheduler.launch import WORKER_HOST, free_port
from corral.scheduler.process import WorkerProcess, WorkerSpec


class Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stranger() -> Iterator[int]:
    """Someone else's server, healthy, on a port."""
    server = http.server.ThreadingHTTPServer((WORKER_HOST, 0), Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


async def start_and_stop(spec: WorkerSpec) -> bool:
    """Start a worker, stop it again; whether it became ready."""
    worker = WorkerProcess(spec)
    async with aiohttp.ClientSession() as session:
        await worker.start(session, timeout=20)
    ready = worker.ready_at is not None
    await worker.stop(grace=5)
    return ready


def test_a_stranger_answering_on_the_port_is_not_taken_for_the_worker(stranger: int) -> None:
    """Our "worker" never binds its port; the stranger's 200 must not make it ready."""
    argv = (sys.executable, "-c", "import time; time.sleep(60)")
    spec = WorkerSpec("m:latest", argv, WORKER_HOST, stranger)
    with pytest.raises(PortTaken, match=f"Port {stranger} for 'm:latest' is answered by another"):
        asyncio.run(start_and_stop(spec))


def test_a_worker_on_its_own_port_is_ready() -> None:
    port = free_port()
    argv = (sys.executable, "-m", "http.server", str(port), "--bind", WORKER_HOST)
    spec = WorkerSpec("m:latest", argv, WORKER_HOST, port, health_path="/")
    assert asyncio.run(start_and_stop(spec))
