"""kill -9 of the server in the middle of a 2,000-request batch loses nothing and
repeats nothing."""

from __future__ import annotations

import io
import json
import signal
import time
from collections import Counter
from pathlib import Path

import openai

from tests.conftest import CHAT_MODEL, install_test_models
from tests.integration.test_batches import chat_line, jsonl, wait_batch
from tests.support.server import CorralServer

N = 2000


def start(home: Path, log: Path) -> CorralServer:
    srv = CorralServer(home, slots=8, context_length=256)
    srv.env["CORRAL_EXECUTION_LOG"] = str(log)
    return srv.start()


def test_kill_9_mid_batch_then_restart(tmp_path: Path) -> None:
    home, log = tmp_path / "home", tmp_path / "executions.log"
    install_test_models(home).close()
    srv = start(home, log)
    with openai.OpenAI(base_url=srv.openai_url, api_key="x", max_retries=0) as client:
        lines = [chat_line(i, max_tokens=8) for i in range(N)]
        f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
        batch = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 120
        while (client.batches.retrieve(batch.id).request_counts.completed or 0) < N // 4:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, srv.log()[-2000:]
            time.sleep(0.05)
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
            output = [
                json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()
            ]
    finally:
        srv.stop()
    ids = [o["custom_id"] for o in output]
    assert len(ids) == N and set(ids) == {f"req-{i}" for i in range(N)}
    assert all(o["response"]["body"]["model"] == CHAT_MODEL for o in output)
    executions = Counter(log.read_text().split())
    assert set(executions) == {f"{batch.id}/req-{i}" for i in range(N)}
    repeated = {k: v for k, v in executions.items() if v > 1}
    assert repeated == {}, f"executed more than once: {repeated}"
