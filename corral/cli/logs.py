"""``corral logs``: the server's request log, filtered, or followed as it grows."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from rich.console import Console

from corral.cli.admin import call

FOLLOW_EVERY = 1.0


def show_logs(
    base_url: str,
    console: Console,
    filters: dict[str, str],
    follow: bool,
    as_json: bool,
) -> None:
    after = 0
    while True:
        query = urlencode({**filters, **({"after": str(after)} if after else {})})
        rows: list[dict[str, Any]] = call(base_url, "GET", f"/admin/logs?{query}")["data"]
        for row in rows:
            if as_json:
                console.print_json(data=row)
            else:
                console.print(line(row), highlight=False, soft_wrap=True)
            after = max(after, int(row["id"]))
        if not follow:
            return
        time.sleep(FOLLOW_EVERY)


def line(row: dict[str, Any]) -> str:
    """One request on one line: when, status, method, route, model, tokens, times, key."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["at"]))
    tokens = ""
    if row["prompt_tokens"] is not None or row["completion_tokens"] is not None:
        tokens = f" {row['prompt_tokens'] or 0}+{row['completion_tokens'] or 0} tok"
    ttft = f" ttft {row['ttft_ms']:.0f} ms" if row["ttft_ms"] is not None else ""
    model = f" {row['model']}" if row["model"] else ""
    key = f" key={row['key_id']}" if row["key_id"] else ""
    user = f" user={row['user']}" if row["user"] else ""
    return (
        f"{when} {row['status']} {row['method']} {row['route']}{model}{tokens}"
        f" {row['duration_ms']:.0f} ms{ttft}{key}{user} {row['client'] or ''}"
    ).rstrip()
