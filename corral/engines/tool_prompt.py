"""Tools for chat templates that ignore them: the Hermes convention, written into messages.

Templates made for tool use (Qwen2.5, Hermes, Llama 3.1, Mistral...) render ``tools``,
``tool_calls`` and ``tool`` messages themselves. Many others, and the ChatML fallback,
use only ``role`` and ``content``: tools would vanish from the prompt, and so would
earlier calls and their results. For those templates the tools are described in the
system message the way Hermes and Qwen models were trained to read them, earlier calls
become ``<tool_call>`` blocks in the assistant's text and results ``<tool_response>``
blocks in a user turn: plain messages that any template renders. Replies are read back
in the same convention (``corral.worker.tool_calls.TaggedCalls``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

TOOLS_PREAMBLE = """# Tools

You may call one or more functions to help with the user's request.

The functions you can call are described within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a JSON object with the function name and its arguments \
within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def mentions_tools(messages: Sequence[dict[str, Any]]) -> bool:
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def inline_tools(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``messages`` with tools, calls and results written as text (the Hermes convention)."""
    out: list[dict[str, Any]] = []
    results_turn = False  # the last message is a user turn made of tool results
    for message in messages:
        if message.get("role") == "tool":
            block = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if results_turn:
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block})
            results_turn = True
            continue
        results_turn = False
        item = {k: v for k, v in message.items() if k not in ("tool_calls", "tool_call_id")}
        if message.get("tool_calls"):
            calls = "\n".join(_call_block(call) for call in message["tool_calls"])
            item["content"] = "\n".join(filter(None, [message.get("content"), calls]))
        out.append(item)
    if tools:
        _describe(out, tools)
    return out


def _call_block(call: dict[str, Any]) -> str:
    function = call.get("function", call)
    body = {"name": function.get("name"), "arguments": function.get("arguments", {})}
    return f"<tool_call>\n{json.dumps(body, ensure_ascii=False)}\n</tool_call>"


def _describe(messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]]) -> None:
    """Append the tool descriptions to the system message, or start with one."""
    text = TOOLS_PREAMBLE.format(
        tools="\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    )
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        messages[0] = {**first, "content": f"{first.get('content') or ''}\n\n{text}".lstrip()}
    else:
        messages.insert(0, {"role": "system", "content": text})
