"""A batch's output and error files, appended to durably; the record of what is done.

Results are appended in groups and fsynced before the group's lines are marked done
in the database, so the files are never behind the database. A crash can leave the
files ahead (lines written, not yet marked) or end them with half a line; ``answered``
returns every input line the files answer (a half line is none), and the next
generation marks those done instead of running them again. So each input line ends
up answered exactly once, whenever the process dies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


@dataclass(frozen=True)
class Result:
    line: int  # 1-based input line
    ok: bool  # True: output file; False: error file
    record: dict[str, Any]  # the JSONL object, exactly as OpenAI writes it


class Journal:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.output_path = directory / "output.jsonl"
        self.error_path = directory / "errors.jsonl"
        self._output: IO[bytes] | None = None
        self._errors: IO[bytes] | None = None

    def append(self, results: Iterable[Result]) -> None:
        """Write the results and make them durable (one fsync per file touched)."""
        touched: set[int] = set()
        for result in results:
            f = self._file(result.ok)
            f.write(json.dumps(result.record, separators=(",", ":")).encode() + b"\n")
            touched.add(id(f))
        for opened in (self._output, self._errors):
            if opened is not None and id(opened) in touched:
                opened.flush()
                os.fsync(opened.fileno())

    def _file(self, ok: bool) -> IO[bytes]:
        if ok:
            if self._output is None:
                self._output = self.output_path.open("ab")
            return self._output
        if self._errors is None:
            self._errors = self.error_path.open("ab")
        return self._errors

    def close(self) -> None:
        for opened in (self._output, self._errors):
            if opened is not None:
                opened.close()
        self._output = self._errors = None

    def answered(self, line_of: dict[str, int]) -> dict[int, bool]:
        """Input lines the files answer (line -> ok); a torn last line (a crash
        mid-write) is not an answer. Read only: a journal is appended to by one
        generation (see ``leases.py``), and only that one ever writes to it.

        ``line_of`` maps custom_id to input line number (unique within a batch).
        """
        done: dict[int, bool] = {}
        for ok, record in self.records():
            line = line_of.get(str(record.get("custom_id")))
            if line is not None:
                done[line] = ok
        return done

    def records(self) -> Iterator[tuple[bool, dict[str, Any]]]:
        """Every complete record, (ok, record): the output file's, then the errors'."""
        for path, ok in ((self.output_path, True), (self.error_path, False)):
            for record in complete_records(path):
                yield ok, record


def complete_records(path: Path) -> Iterator[dict[str, Any]]:
    """The file's records up to a torn or unreadable line (streamed: files are large)."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                return  # torn by a crash mid-write
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                return
            if isinstance(record, dict):
                yield record
