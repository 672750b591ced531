"""One line of a batch input file, checked the way OpenAI checks it.

Pure functions: the upload route checks every line as the bytes arrive and names the
first bad one; batch creation checks the lines against the batch (endpoint, model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from corral.errors import BadLine, InvalidRequest
from corral.protocol.parse import check_parsed, too_deep

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
MAX_CUSTOM_ID = 512


@dataclass(frozen=True)
class BatchLine:
    number: int  # 1-based
    custom_id: str
    url: str
    body: dict[str, Any]

    @property
    def model(self) -> str | None:
        model = self.body.get("model")
        return model if isinstance(model, str) else None


def parse_line(raw: bytes, number: int) -> BatchLine:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadLine(number, f"not valid JSON ({exc.msg} at column {exc.colno}).") from None
    except UnicodeDecodeError:
        raise BadLine(number, "not valid UTF-8.") from None
    except RecursionError:
        raise BadLine(number, too_deep().message) from None
    try:  # what a request body would be refused for, refused at upload
        check_parsed(raw, data)
    except InvalidRequest as exc:
        raise BadLine(number, exc.message) from None
    if not isinstance(data, dict):
        raise BadLine(number, "each line must be a JSON object.")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise BadLine(number, "'custom_id' must be a non-empty string.")
    if len(custom_id) > MAX_CUSTOM_ID:
        raise BadLine(number, f"'custom_id' is longer than {MAX_CUSTOM_ID} characters.")
    if data.get("method") != "POST":
        raise BadLine(number, "'method' must be \"POST\".")
    url = data.get("url")
    if url not in ENDPOINTS:
        raise BadLine(number, f"'url' must be one of {', '.join(ENDPOINTS)}, not {url!r}.")
    body = data.get("body")
    if not isinstance(body, dict):
        raise BadLine(number, "'body' must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadLine(number, "'body.model' must name a model.")
    unknown = set(data) - {"custom_id", "method", "url", "body"}
    if unknown:
        raise BadLine(number, f"unknown field(s) {', '.join(sorted(unknown))}.")
    return BatchLine(number, custom_id, str(url), body)


class LineChecker:
    """Checks lines one at a time as an upload streams in; remembers custom_ids."""

    def __init__(self) -> None:
        self.count = 0
        self._ids: dict[str, int] = {}

    def feed(self, raw: bytes) -> None:
        if not raw.strip():
            raise BadLine(self.count + 1, "empty line.")
        self.count += 1
        line = parse_line(raw, self.count)
        first = self._ids.setdefault(line.custom_id, line.number)
        if first != line.number:
            raise BadLine(
                line.number, f"duplicate custom_id {line.custom_id!r} (first on line {first})."
            )
