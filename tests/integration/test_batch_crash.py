"""kill -9 of the server in the middle of a 2,000-request batch loses nothing and
repeats nothing.

What is tested is the batch runner's journal and recovery, so the model is the fake
engine's (``tests/support/fake_engine.py``): it records each request it ran to the end
in ``CORRAL_EXECUTION_LOG``, as the real worker does.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import openai

from tests.support.batches import chat_line, completed_count, output_of, submit, wait_batch
from tests.support.fake_engine import install_fake_models
from tests.support.server import CorralServer

N = 2000
MODEL = "m:latest"


def start(home: Path, log: Path) -> CorralServer:
    srv = CorralServer(home, fake_engine=True, slots=8)
    srv.env["CORRAL_EXECUTION_LOG"] = str(log)
    return srv.start()


def test_kill_9_mid_batch_then_restart(tmp_path: Path) -> None:
    home, log = tmp_path / "home", tmp_path / "executions.log"
    install_fake_models(home, {"m": {"tokens": 8}}).close()
    srv = start(home, log)
    with openai.OpenAI(base_url=srv.openai_url, api_key="x", max_retries=0) as client:
        batch = submit(client, [chat_line(i, MODEL, max_tokens=8) for i in range(N)])
        deadline = time.monotonic() + 120
        while completed_count(client, batch.id) < N // 4:
            assert time.monotonic() < deadline, srv.log()[-2000:]
            time.sleep(0.02)
    srv.stop(signal.SIGKILL)
    before = Counter(log.read_text().split())
    assert N // 4 <= len(before) < N, "the kill must land mid-batch"

    srv = start(home, log)
    try:
        with openai.OpenAI(base_url=srv.openai_url, api_key="x", max_retries=0) as client:
            done = wait_batch(client, batch.id, timeout=300)
            assert done.status == "completed", done
            assert done.request_counts is not None
            assert (done.request_counts.completed, done.request_counts.failed) == (N, 0)
            output = output_of(client, done.output_file_id)
    finally:
        srv.stop()
    ids = [o["custom_id"] for o in output]
    assert len(ids) == N and set(ids) == {f"req-{i}" for i in range(N)}
    assert all(o["response"]["body"]["model"] == MODEL for o in output)
    executions = Counter(log.read_text().split())
    assert set(executions) == {f"{batch.id}/req-{i}" for i in range(N)}
    repeated = {k: v for k, v in executions.items() if v > 1}
    assert repeated == {}, f"executed more than once: {repeated}"
