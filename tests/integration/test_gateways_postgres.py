"""Two gateways on one PostgreSQL database and one CORRAL_HOME (shared storage).

A real PostgreSQL (``tests/support/postgres.py``: initdb in a temporary directory, a
Unix socket) and two real ``corral serve`` processes. They share the registry and
the keys; a batch is cut into chunks that both gateways work on, one gateway (the
lease holder) coordinates it, and when that gateway is killed with kill -9 the other
takes the batch over: every request's result is in the output exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from corral.batch.tables import BatchChunkRow, BatchDoneRow, BatchRow
from tests.support.batches import chat_line, completed_count, output_of, submit, wait_batch
from tests.support.fake_engine import install_fake_models
from tests.support.models import CHAT, model_file
from tests.support.postgres import PostgresServer, missing
from tests.support.server import CorralServer

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")
psycopg = pytest.importorskip("psycopg")
N = 2000
MODEL = "m:latest"
LEASE = 2.0  # seconds: the survivor takes over soon after the kill
CHUNK = 100  # lines: 20 chunks, for the two gateways to split


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


def gateway(home: Path, url: str, name: str, log: Path | None = None) -> CorralServer:
    srv = CorralServer(
        home,
        fake_engine=True,
        database_url=url,
        gateway_id=name,
        batch_lease=LEASE,
        batch_chunk=CHUNK,
        slots=8,
    )
    srv.log_path = home.parent / f"{name}.log"
    if log is not None:
        srv.env["CORRAL_EXECUTION_LOG"] = str(log)
    return srv.start()


def test_gateways_starting_together_migrate_a_fresh_database_once(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database("fresh")
    code = (
        "import sys; from pathlib import Path; from corral.registry.store import Registry; "
        "r = Registry(Path(sys.argv[2]), sys.argv[1]); print(len(r.list())); r.close()"
    )
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, str(tmp_path / f"home-{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for start in starts:
        out, err = start.communicate(timeout=120)
        assert start.returncode == 0 and out.strip() == "0", err
    with psycopg.connect(postgres.dsn("fresh")) as conn:
        assert conn.execute("select version_num from alembic_version").fetchall() == [("0009",)]


def test_two_gateways_share_models_and_keys(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.create_database("shared")
    home = tmp_path / "home"
    install_fake_models(home, {"m": {"tokens": 2}}, url).close()
    a, b = gateway(home, url, "a"), gateway(home, url, "b")
    try:
        put = httpx.put(
            a.url + "/admin/uploads/tiny.gguf?name=uploaded",
            content=model_file(CHAT).read_bytes(),
            timeout=60,
        )
        assert put.status_code == 201, put.text
        names = {m["name"] for m in httpx.get(b.url + "/admin/models").json()["models"]}
        assert {"m:latest", "uploaded:latest"} <= names
        key = httpx.post(a.url + "/admin/keys", json={"name": "ops", "scope": "admin"})
        secret = key.json()["key"]
        # B reads the keys again every 2 s (keys/store.py): then it asks for one.
        deadline = time.monotonic() + 10
        while httpx.get(b.url + "/v1/models").status_code != 401:
            assert time.monotonic() < deadline, "gateway b never saw the new key"
            time.sleep(0.2)
        with openai.OpenAI(base_url=b.openai_url, api_key=secret, max_retries=0) as client:
            reply = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            assert reply.choices[0].message.content
        # A key's per-minute limit holds across the two: what a let through, b counts.
        headers = {"Authorization": f"Bearer {secret}"}
        made = httpx.post(a.url + "/admin/keys", json={"name": "app", "rpm": 6}, headers=headers)
        limited = made.json()["key"]
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        auth = {"Authorization": f"Bearer {limited}"}
        time.sleep(2.5)  # both have read the new key, and looked at each other's totals

        def status(srv: CorralServer) -> int:
            return httpx.post(
                srv.openai_url + "/chat/completions", json=body, headers=auth
            ).status_code

        assert [status(a) for _ in range(6)] == [200] * 6
        time.sleep(2.5)  # a writes within 1 s, b reads within 1 s after
        assert [status(b) for _ in range(3)] == [429] * 3
    finally:
        a.stop()
        b.stop()


def test_two_gateways_split_a_batch_and_the_survivor_of_a_kill_9_finishes_it(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database("batches")
    home, log = tmp_path / "home", tmp_path / "executions.log"
    # 20 ms a request, 8 slots: a gateway alone would take 5 s, time for the other to join.
    install_fake_models(home, {"m": {"tokens": 4, "token_delay": 0.005}}, url).close()
    gateways = {name: gateway(home, url, name, log) for name in ("a", "b")}
    engine = create_engine(url)
    try:
        with openai.OpenAI(base_url=gateways["a"].openai_url, api_key="x", max_retries=0) as c:
            batch = submit(c, [chat_line(i, MODEL, max_tokens=4) for i in range(N)])
            deadline = time.monotonic() + 120
            working: set[str] = set()  # the gateways seen holding chunks
            while completed_count(c, batch.id) < N // 2:
                assert time.monotonic() < deadline
                with Session(engine) as session:
                    working |= set(
                        session.scalars(
                            select(BatchChunkRow.lease_owner).where(
                                BatchChunkRow.batch_id == batch.id,
                                BatchChunkRow.lease_owner.is_not(None),
                            )
                        )
                    )
                time.sleep(0.05)
        assert working == {"a", "b"}  # the work is split, not only taken over
        with Session(engine) as session:
            owner = session.get(BatchRow, batch.id)
            assert owner is not None and owner.lease_owner in gateways
            running = owner.lease_owner  # the coordinator: the harder one to lose
        victim = gateways.pop(running)
        assert victim.proc is not None
        os.killpg(victim.proc.pid, signal.SIGKILL)  # the gateway and its workers
        victim.proc.wait()
        before = Counter(log.read_text().split())
        assert N // 2 <= len(before) < N, "the kill must land mid-batch"
        (survivor,) = gateways.values()
        with openai.OpenAI(base_url=survivor.openai_url, api_key="x", max_retries=0) as c:
            done = wait_batch(c, batch.id, timeout=300)
            assert done.status == "completed", done
            assert done.request_counts is not None
            assert (done.request_counts.completed, done.request_counts.failed) == (N, 0)
            output = output_of(c, done.output_file_id)
        ids = [o["custom_id"] for o in output]
        assert len(ids) == N and set(ids) == {f"req-{i}" for i in range(N)}
        with Session(engine) as session:
            generations = dict(
                session.execute(
                    select(BatchDoneRow.generation, func.count())
                    .where(BatchDoneRow.batch_id == batch.id)
                    .group_by(BatchDoneRow.generation)
                ).all()
            )
        assert len(generations) >= N // CHUNK and sum(generations.values()) == N, generations
        executions = Counter(log.read_text().split())
        assert set(executions) == {f"{batch.id}/req-{i}" for i in range(N)}
    finally:
        engine.dispose()
        for srv in gateways.values():
            srv.stop()


def test_a_cancel_sent_to_one_gateway_stops_the_batch_on_both(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database("cancel")
    home = tmp_path / "home"
    install_fake_models(home, {"m": {"tokens": 4, "token_delay": 0.01}}, url).close()
    a, b = gateway(home, url, "a"), gateway(home, url, "b")
    engine = create_engine(url)
    try:
        with openai.OpenAI(base_url=a.openai_url, api_key="x", max_retries=0) as ca:
            batch = submit(ca, [chat_line(i, MODEL, max_tokens=4) for i in range(N)])
            deadline = time.monotonic() + 60
            while completed_count(ca, batch.id) < N // 10:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with Session(engine) as session:
            row = session.get(BatchRow, batch.id)
            assert row is not None and row.lease_owner in ("a", "b")
            other = b if row.lease_owner == "a" else a  # not the coordinator
        with openai.OpenAI(base_url=other.openai_url, api_key="x", max_retries=0) as c:
            c.batches.cancel(batch.id)
            done = wait_batch(c, batch.id, timeout=60)
            assert done.status == "cancelled", done
            assert done.request_counts is not None
            finished = done.request_counts.completed
            assert N // 10 <= finished < N
            output = output_of(c, done.output_file_id)
        # What was done before the seal is in the output, once; nothing after it counts.
        ids = [o["custom_id"] for o in output]
        assert len(ids) == len(set(ids)) == finished
        with Session(engine) as session:
            marked = session.scalar(select(func.count()).where(BatchDoneRow.batch_id == batch.id))
        assert marked == finished
    finally:
        engine.dispose()
        a.stop()
        b.stop()
