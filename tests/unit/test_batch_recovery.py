"""What a restarted runner makes of a batch a crash interrupted (no server needed)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.batch.batches import Batches
from corral.batch.files import FileStore
from corral.batch.journal import Result
from corral.batch.leases import ChunkLease, LeaseLost, Leases
from corral.batch.lines import LineChecker
from corral.batch.runner import BatchRunner, _Run
from corral.batch.tables import BatchDoneRow
from corral.errors import BadLine
from corral.protocol.handoff import REQUEST_ID_HEADER
from corral.registry.store import Registry


def line(i: int) -> dict[str, Any]:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "m", "input": str(i)},
    }


def output(i: int) -> bytes:
    record = {"id": f"r{i}", "custom_id": f"req-{i}", "response": {"status_code": 200}}
    return json.dumps(record).encode() + b"\n"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[BatchRunner, Batches, str, Path]]:
    registry = Registry(tmp_path)
    files = FileStore(registry.engine, tmp_path / "files", 1 << 20)
    batches = Batches(registry.engine, files)
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(json.dumps(line(i)).encode() + b"\n" for i in range(4)))
    stored = files.add(source, "in.jsonl", "batch", 4)
    batch = batches.create(stored.id, "/v1/embeddings", "24h")
    batches.update(batch.id, status="in_progress", model="m:latest")
    runner = BatchRunner(batches, files, None, tmp_path / "batches")  # type: ignore[arg-type]
    yield runner, batches, batch.id, tmp_path / "batches" / batch.id
    registry.close()


def done_lines(batches: Batches, batch_id: str) -> list[int]:
    with Session(batches.engine) as session:
        query = select(BatchDoneRow.line).where(BatchDoneRow.batch_id == batch_id)
        return sorted(session.scalars(query))


def test_journal_and_worker_spools_are_recovered_once(
    setup: tuple[BatchRunner, Batches, str, Path],
) -> None:
    runner, batches, batch_id, directory = setup
    directory.mkdir(parents=True)
    # req-0 committed to the journal; req-1's line was torn by the crash.
    (directory / "output.jsonl").write_bytes(output(0) + output(1)[:20])
    # A worker finished req-1 and req-2 and spooled them; the gateway died first.
    body = {"object": "list", "data": [], "model": "m:latest"}
    spool = b"".join(
        json.dumps({"id": f"{batch_id}/req-{i}", "body": body}).encode() + b"\n" for i in (1, 2)
    )
    (directory / "spool-77.jsonl").write_bytes(spool + b'{"id": "torn')

    row = batches.get(batch_id)
    chunk = first_chunk(runner, batch_id)
    journal = runner._journal(batch_id, f"c0-g{chunk.generation}")
    assert runner._recover(row, journal, chunk) == {1, 2, 3}
    journal.close()
    # The spooled answers went to this chunk's journal; req-0 stays in the old one.
    written = (directory / f"c0-g{chunk.generation}" / "output.jsonl").read_bytes()
    records = [json.loads(x) for x in written.splitlines()]
    assert [r["custom_id"] for r in records] == ["req-1", "req-2"]
    assert records[0]["response"]["body"] == body and records[0]["response"]["status_code"] == 200
    assert done_lines(batches, batch_id) == [1, 2, 3]
    assert batches.get(batch_id).completed == 3

    # A second restart finds everything already answered: nothing is added twice.
    runner.leases.release_chunk(chunk)
    again = runner.leases.claim_chunk(batch_id)
    assert again is not None and again.generation > chunk.generation
    journal = runner._journal(batch_id, f"c0-g{again.generation}")
    assert runner._recover(batches.get(batch_id), journal, again) == {1, 2, 3}
    journal.close()
    assert not (directory / f"c0-g{again.generation}" / "output.jsonl").exists()
    assert done_lines(batches, batch_id) == [1, 2, 3]
    published = runner._publish(batches.get(batch_id))
    assert published["error_file_id"] is None
    text = runner.files.path(published["output_file_id"] or "").read_bytes()
    assert sorted(json.loads(x)["custom_id"] for x in text.splitlines()) == [
        "req-0",
        "req-1",
        "req-2",
    ]


def first_chunk(runner: BatchRunner, batch_id: str) -> ChunkLease:
    lease = runner.leases.claim(batch_id)
    assert lease is not None
    runner._make_chunks(runner.batches.get(batch_id), lease)
    chunk = runner.leases.claim_chunk(batch_id)
    assert chunk is not None
    return chunk


def test_gateways_take_different_chunks(setup: tuple[BatchRunner, Batches, str, Path]) -> None:
    runner, batches, batch_id, _ = setup
    lease = runner.leases.claim(batch_id)
    assert lease is not None
    runner.chunk_lines = 2
    runner._make_chunks(batches.get(batch_id), lease)
    a, b = Leases(batches.engine, "a", 10), Leases(batches.engine, "b", 10)
    first, second = a.claim_chunk(batch_id), b.claim_chunk(batch_id)
    assert first is not None and second is not None
    assert (first.first, first.last, second.first, second.last) == (1, 2, 3, 4)
    assert a.claim_chunk(batch_id) is None  # both are held, neither expired
    assert first.generation != second.generation


def test_a_gateway_that_lost_its_lease_marks_and_publishes_nothing(
    setup: tuple[BatchRunner, Batches, str, Path],
) -> None:
    runner, batches, batch_id, _ = setup
    lease = runner.leases.claim(batch_id)
    assert lease is not None
    runner._make_chunks(batches.get(batch_id), lease)
    first, second = (
        BatchRunner(
            batches,
            runner.files,
            None,  # type: ignore[arg-type]
            runner.directory,
            leases=Leases(batches.engine, name, 0.2),
        )
        for name in ("a", "b")
    )
    held = first.leases.claim_chunk(batch_id)
    assert held is not None
    assert second.leases.claim_chunk(batch_id) is None  # held, not expired
    mine = first._journal(batch_id, f"c0-g{held.generation}")
    first._commit(held, mine, [result(1, "a")])
    time.sleep(0.3)  # "a" stops renewing: paused, or dead
    taken = second.leases.claim_chunk(batch_id)
    assert taken is not None and taken.generation > held.generation
    assert first.leases.renew_chunk(held) is None
    theirs = second._journal(batch_id, f"c0-g{taken.generation}")
    assert second._recover(batches.get(batch_id), theirs, taken) == {1}
    # "a" wakes up and finishes line 2: written to its journal, refused by the database.
    with pytest.raises(LeaseLost):
        first._commit(held, mine, [result(2, "a")])
    mine.close()
    second._commit(taken, theirs, [result(2, "b"), result(3, "b"), result(4, "b")])
    theirs.close()
    published = second._publish(batches.get(batch_id))
    text = second.files.path(published["output_file_id"] or "").read_bytes()
    ids = sorted((r["custom_id"], r["id"]) for r in map(json.loads, text.splitlines()))
    # Each line exactly once; line 2 from "b", whose commit the database took.
    assert ids == [("req-0", "a"), ("req-1", "b"), ("req-2", "b"), ("req-3", "b")]
    assert second.leases.chunks_left(batch_id) == 0  # all four lines: the chunk is done


def claimed(runner: BatchRunner, batch_id: str) -> _Run:
    lease = runner.leases.claim(batch_id)
    assert lease is not None
    return _Run(lease)


def result(number: int, by: str) -> Result:
    return Result(number, True, {**json.loads(output(number - 1)), "id": by})


def test_line_checker_names_the_first_bad_line() -> None:
    checker = LineChecker()
    checker.feed(json.dumps(line(1)).encode())
    with pytest.raises(BadLine, match=r"Line 2: duplicate custom_id 'req-1' \(first on line 1\)"):
        checker.feed(json.dumps(line(1)).encode())
    with pytest.raises(BadLine, match=r"Line 1: 'body\.model' must name a model"):
        LineChecker().feed(json.dumps({**line(1), "body": {}}).encode())
    with pytest.raises(BadLine, match="Line 1: unknown field"):
        LineChecker().feed(json.dumps({**line(1), "extra": 1}).encode())


class _Reply:
    status = 200

    async def read(self) -> bytes:
        return json.dumps({"object": "list", "data": [], "model": "m:latest"}).encode()


class _Exchange:
    reply = _Reply()


class _Inference:
    """Answers every line but one, on which it hits a bug (an unexpected exception)."""

    def __init__(self, broken: str) -> None:
        self.broken = broken

    def resolve(self, model: str, capability: object, body: object) -> object:
        return object()

    async def send(
        self, record: object, url: str, data: bytes, caller: object, headers: Any
    ) -> Any:
        if headers[REQUEST_ID_HEADER].endswith("/" + self.broken):
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return _Exchange()


def _records(batches: Batches, runner: BatchRunner, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(x) for x in runner.files.path(file_id).read_bytes().splitlines()]


@pytest.mark.anyio
async def test_a_line_that_fails_unexpectedly_goes_to_the_error_file(
    setup: tuple[BatchRunner, Batches, str, Path],
) -> None:
    runner, batches, batch_id, _ = setup
    runner.inference = _Inference(broken="req-2")  # type: ignore[assignment]
    await runner._coordinate(batch_id, claimed(runner, batch_id))
    row = batches.get(batch_id)
    assert (row.status, row.completed, row.failed) == ("completed", 3, 1)
    outputs = _records(batches, runner, row.output_file_id)
    assert sorted(r["custom_id"] for r in outputs) == ["req-0", "req-1", "req-3"]
    [error] = _records(batches, runner, row.error_file_id)
    assert error["custom_id"] == "req-2"
    assert error["response"]["status_code"] == 500
    assert error["response"]["body"]["error"]["code"] == "internal_error"


@pytest.mark.anyio
async def test_a_batch_that_fails_still_hands_over_its_results(
    setup: tuple[BatchRunner, Batches, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, batches, batch_id, _ = setup
    runner.inference = _Inference(broken="none")  # type: ignore[assignment]

    async def broken_finish(*args: object) -> None:
        raise RuntimeError("a bug after the requests ran")

    monkeypatch.setattr(runner, "_finish", broken_finish)
    await runner._coordinate(batch_id, claimed(runner, batch_id))
    row = batches.get(batch_id)
    assert row.status == "failed" and row.errors
    outputs = _records(batches, runner, row.output_file_id)
    assert sorted(r["custom_id"] for r in outputs) == [f"req-{i}" for i in range(4)]
