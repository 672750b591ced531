"""One line of a batch input file, checked the way OpenAI checks it.

Pure functions: the upload route checks every line as the bytes arrive and names the
first bad one; batch creation checks the lines against the batch (endpoint, model).

Besides OpenAI's endpoints, a line may be an Open Inference Protocol (V2) request
(``"url": "/v2/models/NAME[/versions/V]/infer"``, a V2 infer body): its model is named
by the URL, and its results are JSON (a line asking for binary tensors is refused).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from corral.errors import BadLine, InvalidRequest
from corral.protocol.parse import check_parsed, too_deep

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
MAX_CUSTOM_ID = 512
# A V2 infer URL: the model, and its version (a tag) if pinned.
_V2_INFER = re.compile(
    r"/v2/models/(?P<name>[^/]+(?:/[^/]+)*?)(?:/versions/(?P<version>[^/]+))?/infer"
)


def v2_model(url: str) -> str | None:
    """The model (``name`` or ``name:version``) a V2 infer URL names; None for others."""
    found = _V2_INFER.fullmatch(url)
    if found is None:
        return None
    version = found.group("version")
    return found.group("name") + (f":{version}" if version else "")


def known_endpoint(url: str) -> bool:
    return url in ENDPOINTS or v2_model(url) is not None


ENDPOINT_NAMES = ", ".join(ENDPOINTS) + " or /v2/models/NAME/infer"


@dataclass(frozen=True)
class BatchLine:
    number: int  # 1-based
    custom_id: str
    url: str
    body: dict[str, Any]

    @property
    def model(self) -> str | None:
        named = v2_model(self.url)
        if named is not None:
            return named
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
    if not isinstance(url, str) or not known_endpoint(url):
        raise BadLine(number, f"'url' must be one of {ENDPOINT_NAMES}, not {url!r}.")
    body = data.get("body")
    if not isinstance(body, dict):
        raise BadLine(number, "'body' must be a JSON object.")
    if v2_model(url) is not None:
        _check_json_outputs(body, number)
    elif not isinstance(body.get("model"), str) or not body["model"]:
        raise BadLine(number, "'body.model' must name a model.")
    unknown = set(data) - {"custom_id", "method", "url", "body"}
    if unknown:
        raise BadLine(number, f"unknown field(s) {', '.join(sorted(unknown))}.")
    return BatchLine(number, custom_id, str(url), body)


def _check_json_outputs(body: dict[str, Any], number: int) -> None:
    """A batch's results are JSON lines: no binary tensors in or out."""
    params = body.get("parameters")
    asks = isinstance(params, dict) and bool(params.get("binary_data_output"))
    outputs = body.get("outputs")
    if isinstance(outputs, list):
        asks = asks or any(
            isinstance(o, dict)
            and isinstance(o.get("parameters"), dict)
            and o["parameters"].get("binary_data")
            for o in outputs
        )
    if asks:
        raise BadLine(number, "batch results are JSON; binary_data outputs cannot be asked for.")


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
