"""Refuse, before a model is loaded, a structured-output schema its engine would refuse.

The worker turns ``response_format`` and forced tool calls into a grammar and answers
400 for a schema it cannot enforce. Found only there, the refusal would come after
the model was loaded for it, perhaps evicting another one. The gateway makes the
worker's own selection of schemas (``output_grammar``) and runs the same engine-free
check (``schema_support``) first. Whether a model can constrain its output at all is
still the worker's to say.

The check is llama.cpp's converter's. Every caller has passed ``check_serves`` first,
which admits llama.cpp models only; an engine with another converter must bring its
own check here.
"""

from __future__ import annotations

from typing import Any

from corral.engines.schema_support import prepare
from corral.protocol.openai import ChatCompletionRequest
from corral.worker.translate import output_grammar


def refuse_unenforceable(req: ChatCompletionRequest) -> None:
    """Raise the worker's 400 now if a schema of ``req`` cannot be enforced."""
    if req.response_format or req.tools:
        output_grammar(req, _check)


def refuse_unenforceable_body(body: dict[str, Any]) -> None:
    """The same for a chat body built by a translating API (Ollama's ``format``)."""
    if body.get("response_format"):
        refuse_unenforceable(ChatCompletionRequest.model_validate(body))


def _check(schema: dict[str, Any] | None, *, param: str) -> str:
    if schema is not None:
        prepare(schema, param=param)
    return ""
