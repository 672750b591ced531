"""The Batch API end to end with the official `openai` client, against the real server.

The batch runner's logic (results, errors, cancelling, expiry, priorities, turns) is
the gateway's, so these run on the fake engine (``tests/support/fake_engine.py``),
whose replies are as long as ``max_tokens`` asks and take 1 ms a token. One small
batch runs on the real llama.cpp chat model, so the real path stays covered.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import CHAT_MODEL
from tests.support.batches import (
    chat_line,
    completed_count,
    jsonl,
    output_of,
    submit,
    wait_batch,
)
from tests.support.fake_engine import install_fake_models
from tests.support.server import CorralServer

MODEL, EMBED = "m:latest", "embed:latest"
FAKE_MODELS = {
    "m": {"tokens": 100_000, "token_delay": 0.001},
    "embed": {"embedding": True},
}


@pytest.fixture(scope="module")
def batch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    home = tmp_path_factory.mktemp("batch-home")
    install_fake_models(home, FAKE_MODELS).close()
    srv = CorralServer(home, fake_engine=True, slots=4, max_upload="128KiB")
    srv.env["CORRAL_EXECUTION_LOG"] = str(home / "executions.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(batch_server: CorralServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=batch_server.openai_url, api_key="x", max_retries=0) as c:
        yield c


def test_files_and_batches_end_to_end(client: openai.OpenAI) -> None:
    lines = [chat_line(i, MODEL) for i in range(20)]
    lines[7] = chat_line(7, MODEL, max_tokens=-5)  # a per-request failure goes to the error file
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(lines))
    assert client.files.retrieve(uploaded.id).filename == "in.jsonl"
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "test"},
    )
    assert batch.status == "validating" and batch.metadata == {"job": "test"}
    done = wait_batch(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (20, 19)
    assert done.request_counts.failed == 1
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    output = output_of(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(f"req-{i}" for i in range(20) if i != 7)
    first = output[0]
    assert first["response"]["status_code"] == 200 and first["error"] is None
    assert first["response"]["body"]["object"] == "chat.completion"
    assert first["response"]["body"]["usage"]["completion_tokens"] == 4
    assert first["response"]["body"]["choices"][0]["message"]["content"] == "t0 t1 t2 t3 "
    [error] = output_of(client, done.error_file_id)
    assert error["custom_id"] == "req-7" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "max_tokens"
    listed = client.batches.list(limit=5)
    assert batch.id in [b.id for b in listed.data]
    client.files.delete(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_small_batch_on_the_real_chat_model(server: CorralServer) -> None:
    """llama.cpp end to end: the session's real server runs a small batch."""
    with openai.OpenAI(base_url=server.openai_url, api_key="x", max_retries=0) as client:
        lines = [chat_line(i, CHAT_MODEL, ignore_eos=True) for i in range(6)]
        done = wait_batch(client, submit(client, lines).id)
        assert done.status == "completed", done
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (6, 0)
        output = output_of(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in output) == [f"req-{i}" for i in range(6)]
    for record in output:
        body = record["response"]["body"]
        assert record["response"]["status_code"] == 200 and body["model"] == CHAT_MODEL
        assert body["usage"]["completion_tokens"] == 4
        assert body["choices"][0]["finish_reason"] == "length"
        assert isinstance(body["choices"][0]["message"]["content"], str)


def test_embeddings_batch_and_pagination(client: openai.OpenAI) -> None:
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": EMBED, "input": f"text {i}"},
        }
        for i in range(5)
    ]
    ids = [submit(client, lines, endpoint="/v1/embeddings").id for _ in range(3)]
    for batch_id in ids:
        done = wait_batch(client, batch_id)
        assert done.status == "completed" and done.request_counts.completed == 5
    [first, *_] = output_of(client, done.output_file_id)
    assert len(first["response"]["body"]["data"][0]["embedding"]) == 8
    page = client.batches.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    everything = [b.id for b in client.batches.list(limit=2)]  # the client follows pages
    assert set(ids) <= set(everything) and len(everything) == len(set(everything))
    file_page = client.files.list(limit=2)
    assert len(file_page.data) == 2 and file_page.has_more
    all_files = [f.id for f in client.files.list(limit=2)]  # followed page by page
    assert len(all_files) == len(set(all_files)) >= 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"custom_id": "a", "method": "POST"\n', "Line 1: not valid JSON"),
        (jsonl([chat_line(1, MODEL), chat_line(1, MODEL)]), "Line 2: duplicate custom_id 'req-1'"),
        (
            jsonl([chat_line(1, MODEL), {**chat_line(2, MODEL), "url": "/v1/nope"}]),
            "Line 2: 'url' must be",
        ),
        (b"", "The file is empty"),
    ],
)
def test_bad_files_are_refused_with_the_line(
    client: openai.OpenAI, content: bytes, message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("bad.jsonl", io.BytesIO(content)), purpose="batch")
    assert message in str(info.value)


def test_an_upload_over_the_limit_stops_at_the_limit(
    batch_server: CorralServer, client: openai.OpenAI
) -> None:
    big = jsonl([chat_line(i, MODEL) for i in range(2000)])  # ~370 KB; the limit is 128 KiB
    with pytest.raises(openai.APIStatusError) as info:
        client.files.create(file=("big.jsonl", io.BytesIO(big)), purpose="batch")
    assert info.value.status_code == 413
    leftovers = [p.name for p in (batch_server.home / "files").iterdir()]
    assert not any(name.startswith(".upload") for name in leftovers)


def test_batches_that_cannot_run_fail_with_reasons(client: openai.OpenAI) -> None:
    mixed = jsonl([chat_line(1, MODEL), chat_line(2, EMBED)])
    f = client.files.create(file=("m.jsonl", io.BytesIO(mixed)), purpose="batch")
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    failed = wait_batch(client, batch.id)
    assert failed.status == "failed" and failed.errors is not None
    [err] = failed.errors.data or []
    assert (err.code, err.line) == ("mismatched_model", 2)
    wrong = client.batches.create(
        input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert wait_batch(client, wrong.id).errors.data[0].code == "mismatched_endpoint"
    with pytest.raises(openai.BadRequestError, match="endpoint must be one of"):
        client.batches.create(input_file_id=f.id, endpoint="/v1/nope", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-missing", endpoint="/v1/embeddings", completion_window="24h"
        )


def test_cancel_stops_new_work_and_keeps_partial_results(client: openai.OpenAI) -> None:
    batch = submit(client, [chat_line(i, MODEL, max_tokens=64) for i in range(200)])
    deadline = time.monotonic() + 60
    while completed_count(client, batch.id) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_batch(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    counts = done.request_counts
    assert counts is not None and 4 <= counts.completed < 200
    assert len(output_of(client, done.output_file_id)) == counts.completed


def test_expired_window_sends_the_rest_to_the_error_file(client: openai.OpenAI) -> None:
    # 300 requests of 64 tokens at 1 ms a token on 4 slots take ~5 s: far past the window.
    batch = submit(client, [chat_line(i, MODEL, max_tokens=64) for i in range(300)], window="1s")
    done = wait_batch(client, batch.id)
    assert done.status == "expired" and done.expired_at
    counts = done.request_counts
    assert counts is not None and counts.completed + counts.failed == 300
    errors = output_of(client, done.error_file_id)
    assert len(errors) == counts.failed > 0
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}


def test_raw_http_errors_use_openai_shape(batch_server: CorralServer) -> None:
    reply = httpx.post(batch_server.openai_url + "/files", content=b"x")
    assert reply.status_code == 400 and "multipart/form-data" in reply.json()["error"]["message"]
    missing = httpx.get(batch_server.openai_url + "/batches/batch_nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "batch_not_found"


def test_interactive_requests_wait_only_for_the_slots_in_use(
    batch_server: CorralServer, client: openai.OpenAI
) -> None:
    """Batches fill idle slots; an interactive request overtakes every queued batch
    request and waits at most for the (4) requests already in slots.

    Batch requests last about three seconds (3,000 tokens at 1 ms), so the few that
    finish while the client is still sending ours (tens of ms on a loaded CI machine,
    sometimes a second) stay few: with 48 ms requests a slow send let 7 finish, and
    with 1 s requests once 7 again, with a Ray cluster starting beside the test."""
    log = batch_server.home / "executions.log"
    batch = submit(client, [chat_line(i, MODEL, max_tokens=3000) for i in range(120)])

    def batch_done() -> int:
        text = log.read_text() if log.exists() else ""  # nothing has run yet
        return sum(1 for x in text.split() if x.startswith(batch.id))

    deadline = time.monotonic() + 60
    while batch_done() < 8:  # the batch is running and its queue is full
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for _ in range(3):
        before = batch_done()
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "now"}],
            max_tokens=2,
            stream=True,
        )
        next(iter(stream))  # the first chunk: our request holds a slot
        overtaken_by = batch_done() - before
        stream.close()
        assert overtaken_by <= 4, f"{overtaken_by} batch requests finished first"
    assert client.batches.retrieve(batch.id).status == "in_progress"
    client.batches.cancel(batch.id)
    wait_batch(client, batch.id)


def test_cli_submit_status_results_list(batch_server: CorralServer, tmp_path: Path) -> None:
    def corral(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CORRAL_PORT": str(batch_server.port), "COLUMNS": "200"}
        return subprocess.run(
            [sys.executable, "-m", "corral", "batch", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    source = tmp_path / "in.jsonl"
    lines = [chat_line(i, "placeholder") for i in range(6)]
    source.write_bytes(jsonl(lines))
    submitted = corral("submit", str(source), "--model", "m")
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.split()[0]
    assert batch_id.startswith("batch_")
    followed = corral("status", batch_id)
    assert followed.returncode == 0, followed.stderr
    assert f"{batch_id}: completed, 6 completed, 0 failed of 6" in followed.stdout
    out = tmp_path / "out.jsonl"
    fetched = corral("results", batch_id, "-o", str(out))
    assert fetched.returncode == 0, fetched.stderr
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["custom_id"] for r in records) == [f"req-{i}" for i in range(6)]
    assert {r["response"]["body"]["model"] for r in records} == {MODEL}
    assert batch_id in corral("list").stdout
    bad = corral("cancel", batch_id)
    assert bad.returncode == 1 and "only a running batch can be cancelled" in bad.stderr
    files = httpx.get(batch_server.url + "/v1/files", timeout=30).json()["data"]
    typo = corral("submit", str(source), "--model", "mm")
    assert typo.returncode == 1 and "The model 'mm' does not exist" in typo.stderr
    assert "Did you mean 'm:latest'?" in typo.stderr
    assert httpx.get(batch_server.url + "/v1/files", timeout=30).json()["data"] == files


def test_two_batches_on_one_model_take_turns(client: openai.OpenAI) -> None:
    ids = []
    for tag in ("a", "b"):
        lines = [
            {**chat_line(i, MODEL, max_tokens=4), "custom_id": f"{tag}{i}"} for i in range(240)
        ]
        ids.append(submit(client, lines).id)
    deadline = time.monotonic() + 120
    while True:
        a, b = (client.batches.retrieve(i) for i in ids)
        if "completed" in (a.status, b.status):
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # When the first finishes, the other has had its turns all along: neither waited
    # for the other to end (first come, first served would leave it near zero).
    laggard = b if a.status == "completed" else a
    assert laggard.request_counts is not None and laggard.request_counts.completed >= 120
    for batch_id in ids:
        assert wait_batch(client, batch_id).status == "completed"


def test_a_bad_line_stops_the_upload_before_the_rest_arrives(client: openai.OpenAI) -> None:
    """The lines are checked as they stream in: a bad first line is reported even
    though the whole file would also be over the size limit."""
    content = b'{"custom_id": 1}\n' + jsonl([chat_line(i, MODEL) for i in range(2000)])
    with pytest.raises(openai.BadRequestError, match="Line 1: 'custom_id' must be"):
        client.files.create(file=("bad.jsonl", io.BytesIO(content)), purpose="batch")
