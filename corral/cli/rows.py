"""Rows of a prediction file, read one at a time: CSV, JSON Lines or a NumPy ``.npy``.

``corral predict`` must hold only the rows in flight, whatever the file's size, and
name a bad row by its line without stopping. So each format is an iterator of ``Row``:
a line number, and per model input either the row's tensor or the reason there is
none. ``.npy`` files are memory-mapped: a 10 GB array costs the rows read so far.

- CSV: one row per record. A model with one input takes every column; with several,
  a header names them (``age``, or ``x_0``, ``x_1``... for an input of several values).
  A first record that is not numbers is a header.
- JSON Lines: an object by input name (``{"X": [5.1, 3.5, 1.4, 0.2]}``), or for a model
  with one input just its value (``[5.1, 3.5, 1.4, 0.2]``).
- ``.npy``: the rows of one array, for a model with one input; "line" is the row's
  number (from 1).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np

from corral.protocol.tensors import DTYPES, flatten

FORMATS = (".csv", ".jsonl", ".npy")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}


class RowsError(Exception):
    """The file as a whole cannot be read as the model's rows (not one bad row)."""


@dataclass(frozen=True)
class InputSpec:
    """A model input as one row of it: its datatype and the shape after the batch
    dimension (-1: whatever the row holds)."""

    name: str
    datatype: str
    row_shape: tuple[int, ...]

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> InputSpec:
        shape = [int(d) for d in meta["shape"]]
        return cls(meta["name"], meta["datatype"], tuple(shape[1:]))

    @property
    def row_size(self) -> int | None:
        """Values in one row, if fixed."""
        if any(d < 0 for d in self.row_shape):
            return None
        return int(np.prod(self.row_shape, dtype=np.int64))

    def tensor(self, values: Sequence[Any]) -> np.ndarray[Any, Any]:
        """One row's values as this input's tensor row; ValueError says what is wrong."""
        if self.datatype == "BYTES":
            array = np.empty(len(values), dtype=object)
            array[:] = [v if isinstance(v, bytes) else str(v).encode() for v in values]
        elif self.datatype == "BOOL":
            array = np.asarray([_boolean(v) for v in values], dtype=np.bool_)
        else:
            dtype = DTYPES[self.datatype]
            if any(isinstance(v, (bool, list, dict)) or v is None for v in values):
                raise ValueError(f"input {self.name} takes numbers")
            try:
                array = np.asarray(values).astype(dtype)
            except (ValueError, TypeError, OverflowError):
                raise ValueError(f"input {self.name} takes {self.datatype} numbers") from None
        size = self.row_size
        if size is not None and array.size != size:
            raise ValueError(
                f"input {self.name} takes {size} value{'s' if size != 1 else ''} per row, "
                f"this row has {array.size}"
            )
        try:
            return array.reshape(self.row_shape)
        except ValueError:
            raise ValueError(
                f"input {self.name}'s row shape is {list(self.row_shape)}; "
                f"{array.size} values do not fit it"
            ) from None


@dataclass
class Row:
    line: int
    tensors: dict[str, np.ndarray[Any, Any]] | None = None
    error: str | None = None


class RowSource:
    """A file's rows, and how far through the file reading is (for a progress bar)."""

    def __init__(self, path: Path, specs: Sequence[InputSpec]) -> None:
        suffix = path.suffix.lower()
        if suffix not in FORMATS:
            raise RowsError(f"{path.name}: give a .csv, .jsonl or .npy file.")
        if not specs:
            raise RowsError("The model has no inputs.")
        self.path = path
        self.specs = list(specs)
        self.suffix = suffix
        self._array: np.ndarray[Any, Any] | None = None
        self._file: Any = None  # the binary file under the reader: its tell() is progress
        if suffix == ".npy":
            if len(self.specs) != 1:
                raise RowsError(
                    f"A .npy file holds one array; the model takes {len(self.specs)} inputs "
                    "(use .csv with a header, or .jsonl)."
                )
            try:
                self._array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise RowsError(f"{path.name} is not a NumPy .npy file: {exc}") from None
            if self._array.ndim == 0:
                raise RowsError(f"{path.name} holds one value, not rows.")
            self.total = len(self._array)
        else:
            self.total = path.stat().st_size

    def position(self) -> int:
        """Rows read (.npy) or bytes read (text)."""
        if self._array is not None:
            return self._read
        return self._file.tell() if self._file is not None and not self._file.closed else 0

    def __iter__(self) -> Iterator[Row]:
        self._read = 0
        if self._array is not None:
            yield from self._npy(self._array)
            return
        if self.suffix == ".jsonl":
            with self.path.open("rb") as raw:
                self._file = raw
                yield from self._jsonl(raw)
            return
        # Bytes that are not UTF-8 become U+FFFD: that row fails as "not numbers" and
        # reading goes on, where a strict decoder would stop the whole file.
        with self.path.open("r", encoding="utf-8", errors="replace", newline="") as text:
            self._file = text.buffer
            yield from self._csv(text)

    # --- formats ----------------------------------------------------------------------

    def _npy(self, array: np.ndarray[Any, Any]) -> Iterator[Row]:
        spec = self.specs[0]
        for i in range(len(array)):
            self._read = i + 1
            yield self._row(i + 1, lambda i=i: {spec.name: list(np.ravel(array[i]))})

    def _jsonl(self, raw: BinaryIO) -> Iterator[Row]:
        for number, line in enumerate(raw, start=1):
            if not line.strip():
                continue
            yield self._row(number, lambda line=line: self._from_json(line))

    def _from_json(self, line: bytes) -> dict[str, list[Any]]:
        try:
            value = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(f"not JSON ({type(exc).__name__}: {exc})") from None
        if isinstance(value, dict):
            missing = [s.name for s in self.specs if s.name not in value]
            if missing:
                raise ValueError(f"no {', '.join(missing)} (the model's inputs: {self._names()})")
            return {s.name: _flat(value[s.name]) for s in self.specs}
        if len(self.specs) != 1:
            raise ValueError(f"give an object with the model's inputs: {self._names()}")
        return {self.specs[0].name: _flat(value)}

    def _csv(self, text: IO[str]) -> Iterator[Row]:
        reader = csv.reader(text)
        columns: dict[str, list[int]] | None = None
        first = True
        failed_at = -1
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                if reader.line_num == failed_at:  # the reader cannot get past it
                    raise RowsError(f"Line {failed_at}: unreadable CSV: {exc}") from None
                failed_at = reader.line_num
                yield Row(reader.line_num, error=f"unreadable CSV: {exc}")
                continue
            if not record:
                continue
            if first:
                first = False
                if self._is_header(record):
                    columns = self._columns(record)
                    continue
                if len(self.specs) != 1:
                    raise RowsError(
                        f"The model takes {len(self.specs)} inputs ({self._names()}): "
                        "the CSV needs a header naming them."
                    )
            yield self._row(reader.line_num, lambda r=record, c=columns: self._from_csv(r, c))

    def _is_header(self, record: list[str]) -> bool:
        if all(s.datatype == "BYTES" for s in self.specs):
            return {c.strip() for c in record} >= {s.name for s in self.specs}
        for cell in record:
            try:
                float(cell)
            except ValueError:
                if cell.strip().lower() not in _TRUE | _FALSE:
                    return True
        return False

    def _columns(self, header: list[str]) -> dict[str, list[int]] | None:
        names = [c.strip() for c in header]
        if len(self.specs) == 1 and self.specs[0].name not in names:
            return None  # a header of feature names: every column is the one input
        columns = {}
        for spec in self.specs:
            part = re.compile(rf"^{re.escape(spec.name)}(?:[_.\[](\d+)\]?)?$")
            matched = [(m, i) for i, n in enumerate(names) if (m := part.match(n))]
            # x_0, x_1, ... in their numbers' order, wherever the header puts them
            found = [i for m, i in sorted(matched, key=lambda p: int(p[0][1] or -1))]
            if not found:
                raise RowsError(
                    f"The CSV header has no column for input {spec.name} "
                    f"(name it {spec.name}, or {spec.name}_0, {spec.name}_1, ...)."
                )
            columns[spec.name] = found
        return columns

    def _from_csv(self, record: list[str], columns: dict[str, list[int]] | None) -> dict[str, Any]:
        if columns is None:
            return {self.specs[0].name: record}
        if len(record) <= max(max(c) for c in columns.values()):
            raise ValueError(f"{len(record)} columns, fewer than the header's")
        return {name: [record[i] for i in found] for name, found in columns.items()}

    # --- helpers ----------------------------------------------------------------------

    def _row(self, line: int, values: Any) -> Row:
        """A row from a function giving its values by input; its error, if any."""
        try:
            given = values()
            tensors = {s.name: s.tensor(given[s.name]) for s in self.specs}
        except ValueError as exc:
            return Row(line, error=str(exc))
        return Row(line, tensors)

    def _names(self) -> str:
        return ", ".join(s.name for s in self.specs)


def _flat(value: Any) -> list[Any]:
    return flatten(value) if isinstance(value, list) else [value]


def _boolean(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean")
