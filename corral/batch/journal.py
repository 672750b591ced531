"""A batch's output and error files, appended to durably; the record of what is done.

Results are appended in groups and fsynced before the group's lines are marked done
in the database, so the files are never behind the database. A crash can leave the
files ahead (lines written, not yet marked) or end them with half a line; ``recover``
cuts the half line off and returns every input line the files already answer, and
the runner marks those done instead of running them again. So each input line ends
up answered exactly once, whenever the process dies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
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

    def recover(self, line_of: dict[str, int]) -> dict[int, bool]:
        """Input lines the files answer (line -> ok), after cutting off a torn last line.

        ``line_of`` maps custom_id to input line number (unique within a batch).
        """
        done: dict[int, bool] = {}
        for path, ok in ((self.output_path, True), (self.error_path, False)):
            for record in _complete_records(path):
                line = line_of.get(str(record.get("custom_id")))
                if line is not None:
                    done[line] = ok
        return done

    def counts(self) -> tuple[int, int]:
        """(output lines, error lines) in the files."""
        return (_count_lines(self.output_path), _count_lines(self.error_path))


def _complete_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    good_end = 0
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # torn by a crash mid-write
            try:
                records.append(json.loads(raw))
            except json.JSONDecodeError:
                break
            good_end += len(raw)
    if good_end != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return records


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
