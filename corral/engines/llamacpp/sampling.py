"""One request's sampling on llama.cpp: its sampler chain, and its grammar when it has one.

The chain is built in the order llama.cpp's server builds it (``common_sampler_init``):
logit bias, penalties, top-k, top-p, min-p, temperature, then the draw.

A grammar is kept beside the chain, not in it, and used the way the server uses it
(``common_sampler_sample`` with ``grammar_first`` false): draw from the chain, and if
the grammar rejects that one token, draw again from candidates the grammar has filtered
first. Checking one token is cheap; filtering the whole vocabulary before every draw
cost +9 ms per token at a 32k vocabulary and +67 ms at 152k (Qwen's) on this CPU,
several times the decode itself. Either way the token taken is always one the grammar
accepts, which matters twice over: llama.cpp aborts the process when a grammar is
handed a token it rejects, and a complete grammar allows only end-of-generation, which
is how constrained output ends even when the model would go on.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import llama_cpp as lc
import numpy as np

from corral.engines.base import GenerationRequest

_CANDIDATE = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert _CANDIDATE.itemsize == ctypes.sizeof(lc.llama_token_data)


def compile_grammar(vocab: Any, grammar: str) -> Any:
    """llama.cpp's grammar sampler for ``grammar`` (GBNF, rule ``root``), or None if invalid."""
    sampler = lc.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    return sampler if sampler else None


def ignores_eos(request: GenerationRequest) -> bool:
    """``ignore_eos`` holds unless a grammar constrains the output: a complete grammar
    allows only end-of-generation, so banning it would leave nothing to sample."""
    return request.ignore_eos and request.grammar is None


class GrammarError(Exception):
    """The request's grammar did not compile."""


class SlotSampler:
    def __init__(
        self, request: GenerationRequest, vocab: Any, eog: set[int], n_ctx_slot: int
    ) -> None:
        self._n_vocab = int(lc.llama_vocab_n_tokens(vocab))
        self._grammar = None
        if request.grammar is not None:
            self._grammar = compile_grammar(vocab, request.grammar)
            if self._grammar is None:
                raise GrammarError("the request's grammar did not compile")
            self._candidates = np.zeros(self._n_vocab, dtype=_CANDIDATE)
            self._ids = np.arange(self._n_vocab, dtype=np.int32)
        self._chain = self._make_chain(request, eog, n_ctx_slot)

    def sample(self, ctx: Any, index: int) -> int:
        """Draw the next token from the logits at ``index`` of the last batch, and accept it."""
        if self._grammar is None:
            return int(lc.llama_sampler_sample(self._chain, ctx, index))
        token = self._draw(ctx, index, constrained=False)
        if not self._allowed(token):
            token = self._draw(ctx, index, constrained=True)
        lc.llama_sampler_accept(self._grammar, token)
        lc.llama_sampler_accept(self._chain, token)
        return token

    def free(self) -> None:
        lc.llama_sampler_free(self._chain)
        if self._grammar is not None:
            lc.llama_sampler_free(self._grammar)
            self._grammar = None

    def _draw(self, ctx: Any, index: int, constrained: bool) -> int:
        logits = lc.llama_get_logits_ith(ctx, index)
        cands = self._candidates
        cands["id"] = self._ids
        cands["logit"] = np.ctypeslib.as_array(logits, shape=(self._n_vocab,))
        cands["p"] = 0.0
        array = lc.llama_token_data_array(
            data=cands.ctypes.data_as(lc.llama_token_data_p),
            size=self._n_vocab,
            selected=-1,
            sorted=False,
        )
        if constrained:
            lc.llama_sampler_apply(self._grammar, ctypes.byref(array))
        lc.llama_sampler_apply(self._chain, ctypes.byref(array))
        return int(cands["id"][array.selected])

    def _allowed(self, token: int) -> bool:
        one = lc.llama_token_data(token, 1.0, 0.0)
        array = lc.llama_token_data_array(
            data=ctypes.pointer(one), size=1, selected=-1, sorted=False
        )
        lc.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return bool(one.logit != -math.inf)

    def _make_chain(self, request: GenerationRequest, eog: set[int], n_ctx_slot: int) -> Any:
        p = request.sampling
        samplers = []
        bias = {t: b for t, b in p.logit_bias.items() if 0 <= t < self._n_vocab}
        if ignores_eos(request):
            bias.update(dict.fromkeys(eog, -math.inf))
        if bias:
            entries = (lc.llama_logit_bias * len(bias))(
                *(lc.llama_logit_bias(t, b) for t, b in bias.items())
            )
            samplers.append(lc.llama_sampler_init_logit_bias(self._n_vocab, len(bias), entries))
        if p.penalized:
            samplers.append(self._penalties(request, n_ctx_slot))
        if p.greedy:
            samplers.append(lc.llama_sampler_init_greedy())
        else:
            if p.top_k > 0:
                samplers.append(lc.llama_sampler_init_top_k(p.top_k))
            if p.top_p < 1.0:
                samplers.append(lc.llama_sampler_init_top_p(p.top_p, 1))
            if p.min_p > 0.0:
                samplers.append(lc.llama_sampler_init_min_p(p.min_p, 1))
            samplers.append(lc.llama_sampler_init_temp(p.temperature))
            seed = lc.LLAMA_DEFAULT_SEED if p.seed is None else p.seed & 0xFFFFFFFF
            samplers.append(lc.llama_sampler_init_dist(seed))
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        for sampler in samplers:
            lc.llama_sampler_chain_add(chain, sampler)  # the chain owns it from here
        return chain

    def _penalties(self, request: GenerationRequest, n_ctx_slot: int) -> Any:
        p = request.sampling
        last_n = n_ctx_slot if p.repeat_last_n < 0 else p.repeat_last_n
        sampler = lc.llama_sampler_init_penalties(
            self._n_vocab, last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
        )
        # Penalties count the recent prompt too, as in llama.cpp's server.
        for token in list(request.prompt_tokens)[-max(p.repeat_last_n, 0) :]:
            lc.llama_sampler_accept(sampler, token)
        return sampler
