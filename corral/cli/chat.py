"""``corral run``: an interactive, streaming chat with a model on a running server.

It is an ordinary OpenAI client of the server (``/v1/chat/completions`` with
``stream: true``), so what works here works for every other client too.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx
from rich.console import Console

from corral.cli.client_auth import auth_headers

HELP = "Type a message. /clear forgets the conversation, /bye (or Ctrl-D) quits."


def chat_loop(
    base_url: str,
    model: str,
    prompt: str | None,
    max_tokens: int | None,
    console: Console,
    err: Console,
) -> int:
    timeout = httpx.Timeout(None, connect=5.0)
    with httpx.Client(base_url=base_url, timeout=timeout, headers=auth_headers()) as client:
        try:
            client.get("/health")
        except httpx.TransportError:
            err.print(
                f"[red]error:[/red] Corral is not running at {base_url}. "
                "Start it with `corral serve`."
            )
            return 1
        if prompt is None and not sys.stdin.isatty():
            prompt = sys.stdin.read()
        if prompt is not None:
            messages = [{"role": "user", "content": prompt}]
            return 0 if _reply(client, model, messages, max_tokens, err) is not None else 1
        return _interactive(client, model, max_tokens, console, err)


def _interactive(
    client: httpx.Client, model: str, max_tokens: int | None, console: Console, err: Console
) -> int:
    console.print(f"[dim]Chatting with {model}. {HELP}[/dim]")
    messages: list[dict[str, Any]] = []
    while True:
        try:
            line = console.input("[bold]>>> [/bold]")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/bye", "/exit", "/quit"):
            return 0
        if text == "/clear":
            messages.clear()
            console.print("[dim]Conversation cleared.[/dim]")
            continue
        messages.append({"role": "user", "content": line})
        answer = _reply(client, model, messages, max_tokens, err)
        if answer is None:
            messages.pop()
        else:
            messages.append({"role": "assistant", "content": answer})


def _reply(
    client: httpx.Client,
    model: str,
    messages: list[dict[str, Any]],
    max_tokens: int | None,
    err: Console,
) -> str | None:
    """Stream one answer to stdout; return its text, or None if it failed."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    parts: list[str] = []
    try:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                err.print(f"[red]error:[/red] {_error_message(response.text)}")
                return None
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                if "error" in chunk:
                    err.print(f"\n[red]error:[/red] {chunk['error'].get('message')}")
                    return None
                for choice in chunk.get("choices", []):
                    text = choice.get("delta", {}).get("content") or ""
                    parts.append(text)
                    sys.stdout.write(text)
                    sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return "".join(parts)
    except httpx.TransportError as exc:
        err.print(f"\n[red]error:[/red] lost the connection to the server: {exc}")
        return None
    sys.stdout.write("\n")
    return "".join(parts)


def _error_message(body: str) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body
