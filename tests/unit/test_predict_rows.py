"""``corral predict``'s reading and sending: rows by line, bad rows alone, bounded memory.

The server's side is a test double here (``httpx.MockTransport`` speaking V2 binary
tensors): what is under test is which rows go in which request, which fail, and how
many are held at once. The real server is in ``tests/integration/test_tensor_cli.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from corral.cli.predict import Client, PredictError, Writer, chunks, predict
from corral.cli.rows import InputSpec, RowsError, RowSource
from corral.protocol import tensors
from corral.protocol.v2 import HEADER_LENGTH

X = InputSpec("X", "FP32", (3,))


def test_csv_rows_keep_their_line_numbers_and_bad_rows_fail_alone(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text('a,b,c\n1,2,3\n4,five,6\n"7","8\n",9\n1,2\n\n10,11,12\n')
    rows = list(RowSource(path, [X]))
    assert [(r.line, r.error is None) for r in rows] == [
        (2, True),
        (3, False),
        (5, True),  # a quoted field over two lines ("8\n" is 8): the record ends on line 5
        (6, False),
        (8, True),
    ]
    assert "FP32" in (rows[1].error or "") and "3 values per row" in (rows[3].error or "")
    path.write_bytes(b"1,2,3\n\xff\xfe,2,3\n4,5,6\n")  # not UTF-8: that row only
    assert [r.error is None for r in RowSource(path, [X])] == [True, False, True]
    assert rows[2].tensors is not None and rows[2].tensors["X"].tolist() == [7.0, 8.0, 9.0]
    assert rows[4].tensors is not None
    assert rows[4].tensors["X"].tolist() == [10.0, 11.0, 12.0]


def test_csv_header_names_several_inputs(tmp_path: Path) -> None:
    specs = [
        InputSpec("age", "INT64", ()),
        InputSpec("x", "FP32", (2,)),
        InputSpec("ok", "BOOL", ()),
    ]
    path = tmp_path / "rows.csv"
    path.write_text("x_1,age,ok,x_0\n0.5,40,true,1.5\n")
    (row,) = list(RowSource(path, specs))
    assert row.tensors is not None
    assert row.tensors["age"].tolist() == 40 and row.tensors["ok"].tolist() is True
    assert row.tensors["x"].tolist() == [1.5, 0.5]  # x_0 first, wherever it stands
    path.write_text("1,2,3\n")
    with pytest.raises(RowsError, match="needs a header"):
        list(RowSource(path, specs))


def test_jsonl_rows_by_name_or_bare_and_hostile_lines(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    deep = "[" * 100_000 + "]" * 100_000
    path.write_text(
        '{"X": [1, 2, 3]}\n[[4], [5], [6]]\n{"Y": 1}\nnot json\n' + deep + '\n["a", 2, 3]\n'
    )
    rows = list(RowSource(path, [X]))
    assert [r.line for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r.error is None for r in rows] == [True, True, False, False, False, False]
    assert "no X" in (rows[2].error or "") and "not JSON" in (rows[3].error or "")


def test_npy_rows_are_memory_mapped(tmp_path: Path) -> None:
    path = tmp_path / "rows.npy"
    np.save(path, np.arange(12, dtype=np.float64).reshape(4, 3))
    source = RowSource(path, [X])
    assert source.total == 4
    rows = iter(source)
    first = next(rows)
    assert first.tensors is not None and first.tensors["X"].dtype == np.float32
    assert source.position() == 1
    assert [r.line for r in rows] == [2, 3, 4]
    with pytest.raises(RowsError, match="one array"):
        RowSource(path, [X, InputSpec("Y", "FP32", ())])
    (tmp_path / "bad.npy").write_bytes(b"nope")
    with pytest.raises(RowsError, match="not a NumPy"):
        RowSource(tmp_path / "bad.npy", [X])


def _server(refuse: float, seen: list[int]) -> httpx.MockTransport:
    """A V2 server double: the sum of each row, and a 400 for any request holding a row
    that starts with ``refuse``."""

    def handle(request: httpx.Request) -> httpx.Response:
        decoded = tensors.decode_request(request.content, request.headers.get(HEADER_LENGTH))
        x = decoded.inputs["X"]
        seen.append(len(x))
        if (x[:, 0] == refuse).any():
            return httpx.Response(400, json={"error": f"row starting {refuse} refused"})
        body, length = tensors.encode_response("m", "1", None, {"sum": x.sum(axis=1)}, True)
        headers = {HEADER_LENGTH: str(length)} if length is not None else {}
        return httpx.Response(200, content=body, headers=headers)

    return httpx.MockTransport(handle)


def test_a_refused_request_is_retried_row_by_row(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    lines = [f"{i},1,1" for i in range(10)]
    lines[3] = "oops,1,1"
    path.write_text("\n".join(lines) + "\n")
    seen: list[int] = []
    client = Client("http://corral/v2/models/m/versions/1", {}, _server(7.0, seen))
    out = tmp_path / "out.jsonl"
    writer = Writer(out, tmp_path / "errors.jsonl")
    tally = predict(client, RowSource(path, [X]), writer, batch_size=4, in_flight=2)
    writer.close()
    assert (tally.rows, tally.failed) == (8, 2)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in written] == [1, 2, 3, 5, 6, 7, 9, 10]  # in order
    assert [r["sum"] for r in written] == [2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 10.0, 11.0]
    errors = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert [e["line"] for e in errors] == [4, 8]
    assert "refused" in errors[1]["error"]
    # Rows 1-3 + 5 (one request), 6-9 refused and then sent one by one, 10 alone.
    assert seen == [4, 4, 1, 1, 1, 1, 1]


def test_a_broken_server_stops_the_run(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("1,2,3\n")
    failing = httpx.MockTransport(lambda request: httpx.Response(500, json={"error": "boom"}))
    client = Client("http://corral/v2/models/m/versions/1", {}, failing)
    writer = Writer(tmp_path / "out.csv", tmp_path / "errors.jsonl")
    with pytest.raises(PredictError, match="500: boom"):
        predict(client, RowSource(path, [X]), writer, batch_size=4, in_flight=1)
    writer.close()


def test_memory_holds_the_rows_in_flight_not_the_file(tmp_path: Path) -> None:
    """However long the file, rows read but not yet written stay under a bound."""
    path = tmp_path / "rows.csv"
    path.write_text("".join(f"{i},0,0\n" for i in range(5000)))
    source = RowSource(path, [X])
    read = [0]
    most = [0]

    class Counting(RowSource):
        def __iter__(self) -> Any:
            for row in source:
                read[0] += 1
                yield row

    counted = Counting.__new__(Counting)
    counted.__dict__.update(source.__dict__)
    writer = Writer(tmp_path / "out.csv", tmp_path / "errors.jsonl")
    original = writer.write

    def write(answer: Any) -> None:
        original(answer)
        most[0] = max(most[0], read[0] - writer.tally.rows)

    writer.write = write  # type: ignore[method-assign]
    client = Client("http://corral/v2/models/m/versions/1", {}, _server(-1.0, []))
    tally = predict(client, counted, writer, batch_size=50, in_flight=2)
    writer.close()
    assert tally.rows == 5000
    assert most[0] <= 50 * 2 * 2 + 50, most[0]
    header, first = (tmp_path / "out.csv").read_text().splitlines()[:2]
    assert header == "line,sum" and first == "1,0.0"


def test_chunks_carry_unreadable_rows_in_place() -> None:
    from corral.cli.rows import Row

    rows = [Row(1, {}), Row(2, error="bad"), Row(3, {}), Row(4, {})]
    assert [([r.line for r in g], [r.line for r in b]) for g, b in chunks(rows, 2)] == [
        ([1, 3], [2]),
        ([4], []),
    ]


def test_outputs_go_to_jsonl_or_csv_only(tmp_path: Path) -> None:
    with pytest.raises(PredictError, match=r"\.jsonl or \.csv"):
        Writer(tmp_path / "out.parquet", tmp_path / "e.jsonl")
    assert not (tmp_path / "out.parquet").exists()
