"""``corral predict MODEL INPUT -o OUT``: every row of a file through a tensor model.

Rows are read as they are sent (``rows.py``), in requests of ``batch_size`` rows with a
few requests in flight, and written in the input's order as answers come back: memory
holds the rows in flight, not the file. A row the model refuses (the server's 400) or
that cannot be read is written to the errors file with its line number and the reason;
the run goes on. Anything else (the server gone, a 500) stops the run, and what was
written stays written.

Output, by OUT's suffix:
- ``.jsonl``: one object per row, ``{"line": 7, "<output>": value, ...}``;
- ``.csv``: a header (``line``, then each output, or ``name_0``, ``name_1``... for an
  output of several values), then one record per row.
"""

from __future__ import annotations

import csv
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np

from corral.cli.replies import error_message
from corral.cli.rows import InputSpec, Row, RowsError, RowSource
from corral.protocol import tensors
from corral.protocol.v2 import HEADER_LENGTH

OUTPUTS = (".jsonl", ".csv")


class PredictError(Exception):
    """The run cannot go on (or start); the message says why."""


@dataclass
class Answer:
    """One row's fate: its outputs, or why it has none."""

    line: int
    outputs: dict[str, np.ndarray[Any, Any]] | None = None
    error: str | None = None


@dataclass
class Tally:
    rows: int = 0
    failed: int = 0
    first_errors: list[str] = field(default_factory=list)


class Client:
    """V2 infer requests to one model version, binary tensors both ways."""

    def __init__(
        self, url: str, headers: dict[str, str], transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url
        self._http = httpx.Client(
            headers=headers, timeout=httpx.Timeout(600, connect=10), transport=transport
        )

    def metadata(self) -> dict[str, Any]:
        reply = self._send("GET", self.url, None)
        if reply.status_code != 200:
            raise PredictError(f"{self.url}: {reply.status_code} {error_message(reply)}")
        meta: dict[str, Any] = reply.json()
        return meta

    def infer(self, rows: list[Row]) -> list[Answer]:
        """The rows' answers; a refused request is retried row by row, so that only
        the rows the model refuses fail."""
        inputs = _stack(rows)
        if inputs is None:  # rows of different shapes: one request each
            return [answer for row in rows for answer in self.infer([row])]
        body, length = tensors.encode_request(inputs)
        reply = self._send(
            "POST",
            self.url + "/infer",
            body,
            {HEADER_LENGTH: str(length), "Content-Type": "application/octet-stream"},
        )
        if reply.status_code == 200:
            outputs = tensors.decode_outputs(reply.content, reply.headers.get(HEADER_LENGTH))
            split = _split(outputs, len(rows))
            if split is not None:
                return [Answer(r.line, o) for r, o in zip(rows, split, strict=True)]
            if len(rows) == 1:
                return [Answer(rows[0].line, outputs)]
        elif reply.status_code == 400 and len(rows) == 1:
            return [Answer(rows[0].line, error=error_message(reply))]
        elif reply.status_code != 400:
            raise PredictError(f"The server answered {reply.status_code}: {error_message(reply)}")
        return [answer for row in rows for answer in self.infer([row])]

    def _send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        try:
            return self._http.request(method, url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise PredictError(f"The server at {url} did not answer: {exc}") from None

    def close(self) -> None:
        self._http.close()


def _stack(rows: list[Row]) -> dict[str, np.ndarray[Any, Any]] | None:
    assert all(r.tensors is not None for r in rows)
    names = list(rows[0].tensors or {})
    stacked = {}
    for name in names:
        parts = [(r.tensors or {})[name] for r in rows]
        if any(p.shape != parts[0].shape for p in parts):
            return None
        stacked[name] = np.stack(parts)
    return stacked


def _split(
    outputs: dict[str, np.ndarray[Any, Any]], count: int
) -> list[dict[str, np.ndarray[Any, Any]]] | None:
    """Per-row outputs, or None when an output is not one row per input row."""
    if any(a.ndim == 0 or len(a) != count for a in outputs.values()):
        return None
    return [{name: a[i] for name, a in outputs.items()} for i in range(count)]


# --- writing ----------------------------------------------------------------------------


class Writer:
    """Answers into OUT, refusals into the errors file (made on the first one)."""

    def __init__(self, out: Path, errors: Path) -> None:
        if out.suffix.lower() not in OUTPUTS:
            raise PredictError(f"{out.name}: write to a .jsonl or .csv file.")
        self.out_path, self.errors_path = out, errors
        self._out: IO[str] = out.open("w", encoding="utf-8", newline="")
        self._errors: IO[str] | None = None
        self._csv = csv.writer(self._out) if out.suffix.lower() == ".csv" else None
        self._columns: list[tuple[str, int]] | None = None
        self.tally = Tally()

    def write(self, answer: Answer) -> None:
        if answer.outputs is None:
            self._error(answer.line, answer.error or "failed")
            return
        self.tally.rows += 1
        if self._csv is None:
            record = {"line": answer.line}
            record.update({k: _json_value(v) for k, v in answer.outputs.items()})
            self._out.write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        if self._columns is None:
            self._columns = [(name, a.size) for name, a in answer.outputs.items()]
            header = ["line"]
            for name, size in self._columns:
                header += [name] if size == 1 else [f"{name}_{i}" for i in range(size)]
            self._csv.writerow(header)
        cells: list[Any] = [answer.line]
        for name, size in self._columns:
            flat = np.ravel(answer.outputs[name])
            if flat.size != size:
                self._error(answer.line, f"output {name} has {flat.size} values, not {size}")
                self.tally.rows -= 1
                return
            cells += [_cell(v) for v in flat]
        self._csv.writerow(cells)

    def _error(self, line: int, message: str) -> None:
        self.tally.failed += 1
        if len(self.tally.first_errors) < 5:
            self.tally.first_errors.append(f"line {line}: {message}")
        if self._errors is None:
            self._errors = self.errors_path.open("w", encoding="utf-8")
        self._errors.write(json.dumps({"line": line, "error": message}) + "\n")

    def close(self) -> None:
        self._out.close()
        if self._errors is not None:
            self._errors.close()


def _json_value(value: Any) -> Any:
    """A row's output as JSON: nested lists, numbers, text (BYTES decoded)."""
    if isinstance(value, np.ndarray):
        if value.dtype != object:
            return value.tolist()
        return [_json_value(v) for v in value]
    return _cell(value)


def _cell(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- the run ----------------------------------------------------------------------------


def chunks(rows: Iterable[Row], size: int) -> Iterator[tuple[list[Row], list[Row]]]:
    """Rows in groups of up to ``size`` readable ones, each with the unreadable rows
    met since the last group (written as errors in their place)."""
    good: list[Row] = []
    bad: list[Row] = []
    for row in rows:
        (bad if row.error else good).append(row)
        if len(good) >= size:
            yield good, bad
            good, bad = [], []
    if good or bad:
        yield good, bad


def predict(
    client: Client,
    source: RowSource,
    writer: Writer,
    *,
    batch_size: int,
    in_flight: int,
    progress: Callable[[int, Tally], None] = lambda position, tally: None,
) -> Tally:
    """Send every row, write every answer in order; at most ``in_flight`` requests at
    once, so at most about ``batch_size * in_flight * 2`` rows in memory."""
    pending: deque[tuple[list[Row], Future[list[Answer]]]] = deque()

    def drain(down_to: int) -> None:
        while len(pending) > down_to:
            bad, future = pending.popleft()
            answers = future.result()  # a PredictError stops the run here
            for answer in sorted(
                [*answers, *(Answer(r.line, error=r.error) for r in bad)],
                key=lambda a: a.line,
            ):
                writer.write(answer)
            progress(source.position(), writer.tally)

    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        try:
            for good, bad in chunks(source, batch_size):
                future: Future[list[Answer]] = (
                    pool.submit(client.infer, good) if good else _done([])
                )
                pending.append((bad, future))
                drain(in_flight * 2 - 1)
            drain(0)
        except BaseException:
            for _, future in pending:
                future.cancel()
            raise
    return writer.tally


def _done(answers: list[Answer]) -> Future[list[Answer]]:
    future: Future[list[Answer]] = Future()
    future.set_result(answers)
    return future


def model_url(base_url: str, model: dict[str, Any]) -> str:
    """The V2 URL of the exact version ``model`` is (``/v2/models/iris/versions/2``)."""
    base, _, tag = model["name"].rpartition(":")
    return f"{base_url}/v2/models/{base}/versions/{tag}"


def open_source(path: Path, meta: dict[str, Any]) -> RowSource:
    try:
        return RowSource(path, [InputSpec.from_metadata(i) for i in meta["inputs"]])
    except RowsError as exc:
        raise PredictError(str(exc)) from None
