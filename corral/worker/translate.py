"""Pure translation of OpenAI-shaped requests into engine requests.

Everything here is a function of its arguments (the engine only tokenizes), so the
rules (defaults, context checks, what is refused and why) are unit-tested without
a model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from corral.engines.base import GenerationRequest, SamplingParams
from corral.engines.chat_template import ChatTemplate
from corral.engines.structured import output_constraint, tool_choice
from corral.errors import ContextLengthExceeded, InvalidRequest, UnsupportedCapability
from corral.protocol.openai import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    SamplingFields,
    TextPart,
    ToolCall,
)
from corral.worker import tool_calls

Tokenize = Callable[[str], list[int]]


def sampling_from(req: SamplingFields) -> SamplingParams:
    """OpenAI's defaults (temperature 1, top_p 1) unless the request says otherwise."""
    return SamplingParams(
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        min_p=req.min_p or 0.0,
        repeat_penalty=1.0 if req.repeat_penalty is None else req.repeat_penalty,
        repeat_last_n=64 if req.repeat_last_n is None else req.repeat_last_n,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        seed=req.seed,
        logit_bias={int(k): v for k, v in (req.logit_bias or {}).items()},
    )


def logprobs_of(req: ChatCompletionRequest | CompletionRequest) -> int | None:
    """How many alternatives to report per token; None: no log-probabilities."""
    if isinstance(req, CompletionRequest):
        return req.logprobs
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs set to true.", param="top_logprobs")
    if not req.logprobs:
        return None
    if tool_choice(req)[0] != "off":
        raise InvalidRequest(
            "logprobs are not supported together with tools yet.", param="logprobs"
        )
    return req.top_logprobs or 0


def refuse_unsupported(req: ChatCompletionRequest | CompletionRequest) -> None:
    """Clear 400s for features this engine does not provide yet, instead of ignoring them."""
    if isinstance(req, CompletionRequest) and req.suffix and not isinstance(req.prompt, str):
        raise InvalidRequest(
            "suffix (fill-in-the-middle) takes a text prompt, not token ids.", param="suffix"
        )


def template_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: content as a plain string."""
    out = []
    for i, message in enumerate(messages):
        item = message.model_dump(exclude_none=True, exclude={"content"})
        item["content"] = _text_content(message, i)
        if message.tool_calls:
            item["tool_calls"] = [_template_call(call) for call in message.tool_calls]
        out.append(item)
    return out


def _template_call(call: ToolCall) -> dict[str, Any]:
    """Arguments as an object: templates write them with ``tojson`` (as transformers expects);
    OpenAI's JSON string would come out encoded twice."""
    item = call.model_dump()
    with contextlib.suppress(json.JSONDecodeError):  # not JSON: passed on as sent
        item["function"]["arguments"] = json.loads(call.function.arguments)
    return item


def _text_content(message: ChatMessage, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for part in message.content:
        if not isinstance(part, TextPart):
            raise UnsupportedCapability(
                f"This model accepts text only; messages[{index}] contains '{part.type}'.",
                param=f"messages[{index}].content",
            )
        parts.append(part.text)
    return "".join(parts)


def chat_prompt(req: ChatCompletionRequest, template: ChatTemplate) -> str:
    tools = [tool.model_dump(exclude_none=True) for tool in req.tools or []]
    return template.render(template_messages(req.messages), tools=tools or None)


def chat_request(
    req: ChatCompletionRequest,
    template: ChatTemplate,
    tokenize_chat: Tokenize,
    context_length: int,
    check_grammar: GrammarCheck | None = None,
) -> GenerationRequest:
    refuse_unsupported(req)
    grammar = constrained(req, check_grammar)
    tokens = tokenize_chat(chat_prompt(req, template))
    max_tokens = req.token_limit()
    check_context(len(tokens), max_tokens, context_length, what="messages")
    return GenerationRequest(
        prompt_tokens=tokens,
        max_tokens=max_tokens,
        sampling=sampling_from(req),
        stop=req.stop_list(),
        ignore_eos=req.ignore_eos,
        grammar=grammar,
        logprobs=logprobs_of(req),
    )


# --- structured outputs and tool calls ------------------------------------------------


def choices(gen: GenerationRequest, n: int) -> list[GenerationRequest]:
    """``n`` generations of one request: each its own seed (the request's, plus its index,
    so a seeded request is reproducible choice by choice)."""
    if n == 1:
        return [gen]
    seed = gen.sampling.seed
    return [
        dataclasses.replace(
            gen,
            sampling=dataclasses.replace(gen.sampling, seed=None if seed is None else seed + i),
        )
        for i in range(n)
    ]


def reply_parser(
    req: ChatCompletionRequest, fmt: tool_calls.CallFormat = "hermes"
) -> tool_calls.ReplyParser:
    """How to read the reply back: plain text, calls in the model's format, or one call."""
    mode, tools = tool_choice(req)
    if mode == "forced":
        return tool_calls.ForcedCall()
    if mode == "auto":
        single = req.parallel_tool_calls is False
        return tool_calls.auto_parser(fmt, (t.function.name for t in tools), single)
    return tool_calls.PlainReply()


def call_format(template: ChatTemplate) -> tool_calls.CallFormat:
    """The model's own tool-call format when its template renders tools; Hermes when
    Corral writes the tools into the prompt itself (``tool_prompt``)."""
    return tool_calls.call_format(template.source) if template.renders_tools else "hermes"


class GrammarCheck(Protocol):
    """``Engine.check_grammar``."""

    def __call__(self, grammar: str, *, param: str) -> None: ...


def constrained(
    req: ChatCompletionRequest | CompletionRequest, check_grammar: GrammarCheck | None
) -> str | None:
    """The request's output grammar, checked by the engine that will run it."""
    constraint = output_constraint(req)
    if constraint is None:
        return None
    if check_grammar is None:
        raise UnsupportedCapability(
            "This model cannot constrain its output to a grammar or schema.",
            param=constraint.param,
        )
    check_grammar(constraint.grammar, param=constraint.param)
    return constraint.grammar


def check_token_ids(tokens: Sequence[int], vocab_size: int, *, param: str) -> None:
    """Refuse token ids the model does not have (llama.cpp fails the whole batch on
    one, which reached the client as a 500): 400 naming the first."""
    if not vocab_size:
        return
    for i, token in enumerate(tokens):
        if not 0 <= token < vocab_size:
            raise InvalidRequest(
                f"Invalid value for '{param}': token id {token} (position {i}) is not in "
                f"this model's vocabulary of {vocab_size} tokens (ids 0 to {vocab_size - 1}).",
                param=param,
            )


def completion_request(
    req: CompletionRequest,
    tokenize_prompt: Tokenize,
    context_length: int,
    check_grammar: GrammarCheck | None = None,
    infill: Callable[[str, str], list[int]] | None = None,
    vocab_size: int = 0,
) -> GenerationRequest:
    refuse_unsupported(req)
    grammar = constrained(req, check_grammar)
    if req.suffix and isinstance(req.prompt, str):
        if infill is None:
            raise InvalidRequest("suffix (fill-in-the-middle) is not supported.", param="suffix")
        tokens = infill(req.prompt, req.suffix)
    elif isinstance(req.prompt, str):
        tokens = tokenize_prompt(req.prompt)
    else:
        tokens = list(req.prompt)
        check_token_ids(tokens, vocab_size, param="prompt")
    if not tokens:
        raise InvalidRequest("The prompt is empty.", param="prompt")
    check_context(len(tokens), req.max_tokens, context_length, what="prompt")
    return GenerationRequest(
        prompt_tokens=tokens,
        max_tokens=req.max_tokens,
        sampling=sampling_from(req),
        stop=req.stop_list(),
        ignore_eos=req.ignore_eos,
        grammar=grammar,
        logprobs=logprobs_of(req),
    )


def check_context(n_prompt: int, max_tokens: int | None, context_length: int, what: str) -> None:
    """OpenAI's rule: prompt plus requested completion must fit the context."""
    if n_prompt >= context_length:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context_length} tokens. However, your "
            f"{what} resulted in {n_prompt} tokens. Please reduce the length of the {what}.",
            param=what,
        )
    if max_tokens is not None and n_prompt + max_tokens > context_length:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context_length} tokens. However, you "
            f"requested {n_prompt + max_tokens} tokens ({n_prompt} in the {what}, {max_tokens} "
            f"in the completion). Please reduce the length of the {what} or completion.",
            param=what,
        )
