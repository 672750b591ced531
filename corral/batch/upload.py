"""Receive a multipart upload straight to disk, checking it as it arrives.

Starlette's form parser would spool the whole file to a temporary file before the
route sees it, so a 10 GB upload could fill the disk before being refused. Here
``python_multipart`` hands over the file part chunk by chunk: each chunk is counted
against the limit (the upload stops at the first byte over it), written to its final
place, and split into lines that a callback checks, so a bad line stops the upload
at that line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from corral.errors import InvalidRequest, UploadTooLarge

MAX_FIELD_BYTES = 64 << 10
# Called with each complete line of the file part and the form fields received so far.
LineCallback = Callable[[bytes, Mapping[str, str]], None]


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    bytes: int = 0


class _Receiver:
    def __init__(
        self, dest: Path, limit: int, on_line: LineCallback | None, max_line: int | None
    ) -> None:
        self.dest = dest
        self.limit = limit
        self.on_line = on_line
        self.max_line = max_line
        self._complete_lines = 0
        self.upload = Upload()
        self._headers: dict[bytes, bytes] = {}
        self._header_field = b""
        self._header_value = b""
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()
        self._file: IO[bytes] | None = None
        # The start of a line whose end has not arrived, in pieces: joined once, when
        # its end comes (appending to one bytes object made a long line quadratic).
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    # --- python_multipart callbacks -------------------------------------------------------

    def on_part_begin(self) -> None:
        self._headers, self._name, self._is_file = {}, None, False
        self._value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        self._name = name.decode() if name else None
        filename = options.get(b"filename")
        if filename is not None and self._name == "file":
            if self._file is not None:
                raise InvalidRequest("Send one file per upload.", param="file")
            self._is_file = True
            self.upload.filename = Path(filename.decode(errors="replace")).name or "upload"
            self._file = self.dest.open("wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if not self._is_file:
            self._value += chunk
            if len(self._value) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"Form field {self._name!r} is too large.")
            return
        self.upload.bytes += len(chunk)
        if self.upload.bytes > self.limit:
            raise UploadTooLarge(
                f"The file is larger than this server's limit of {self.limit:,} bytes "
                "(CORRAL_MAX_UPLOAD)."
            )
        assert self._file is not None
        self._file.write(chunk)
        if self.on_line is not None or self.max_line is not None:
            self._lines(chunk)

    def on_part_end(self) -> None:
        if self._is_file:
            if self._pending:  # the last line, with no final newline
                self._line(self._take_pending(b""))
        elif self._name:
            self.upload.fields[self._name] = self._value.decode(errors="replace")

    # --- helpers --------------------------------------------------------------------------

    def _lines(self, chunk: bytes) -> None:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            self._line(self._take_pending(chunk[start:end]))
            start = end + 1
        if start < len(chunk):
            self._pending.append(chunk[start:])
            self._pending_bytes += len(chunk) - start
            if self.max_line is not None and self._pending_bytes > self.max_line:
                raise InvalidRequest(
                    f"Line {self._complete_lines + 1} of the file is longer than "
                    f"{self.max_line:,} bytes, the limit for one request (CORRAL_MAX_BODY).",
                    param="file",
                )

    def _take_pending(self, end: bytes) -> bytes:
        if not self._pending:
            return end
        line = b"".join([*self._pending, end])
        self._pending, self._pending_bytes = [], 0
        return line

    def _line(self, line: bytes) -> None:
        self._complete_lines += 1
        if self.max_line is not None and len(line) > self.max_line:
            raise InvalidRequest(
                f"Line {self._complete_lines} of the file is longer than {self.max_line:,} "
                "bytes, the limit for one request (CORRAL_MAX_BODY).",
                param="file",
            )
        if self.on_line is not None:
            self.on_line(line.rstrip(b"\r"), self.upload.fields)

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._file.close()
            self._file = None


async def receive_upload(
    content_type: str,
    body: AsyncIterator[bytes],
    dest: Path,
    *,
    limit: int,
    on_line: LineCallback | None = None,
    max_line: int | None = None,
) -> Upload:
    """Parse a ``multipart/form-data`` body, writing its ``file`` part to ``dest``.

    On any error the partial file is removed and the error propagates.
    """
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest("Upload files as multipart/form-data with a 'file' part.")
    receiver = _Receiver(dest, limit, on_line, max_line)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": receiver.on_part_begin,
            "on_header_field": receiver.on_header_field,
            "on_header_value": receiver.on_header_value,
            "on_header_end": receiver.on_header_end,
            "on_headers_finished": receiver.on_headers_finished,
            "on_part_data": receiver.on_part_data,
            "on_part_end": receiver.on_part_end,
        },
    )
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:  # not multipart after all: the client's mistake
        receiver.close()
        dest.unlink(missing_ok=True)  # noqa: ASYNC240
        raise InvalidRequest(f"The multipart/form-data body is malformed: {exc}.") from None
    except BaseException:
        receiver.close()
        dest.unlink(missing_ok=True)  # noqa: ASYNC240 (a local unlink; chunks are written the same way)
        raise
    receiver.close()
    if receiver.upload.filename is None:
        dest.unlink(missing_ok=True)  # noqa: ASYNC240
        raise InvalidRequest("The upload has no 'file' part.", param="file")
    return receiver.upload
