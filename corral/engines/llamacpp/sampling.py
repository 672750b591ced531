"""One request's sampling on llama.cpp: its sampler chain.

The chain is built in the order llama.cpp's server builds it (``common_sampler_init``):
logit bias, penalties, top-k, top-p, min-p, temperature, then the draw. A request with
an output grammar has its logits masked before the chain runs (``guide``), so the
chain draws among allowed tokens only.
"""

from __future__ import annotations

import math
from typing import Any

import llama_cpp as lc

from corral.engines.base import GenerationRequest


def ignores_eos(request: GenerationRequest) -> bool:
    """``ignore_eos`` holds unless a grammar constrains the output: a complete grammar
    allows only end-of-generation, so banning it would leave nothing to sample."""
    return request.ignore_eos and request.grammar is None


class SlotSampler:
    def __init__(
        self, request: GenerationRequest, vocab: Any, eog: set[int], n_ctx_slot: int
    ) -> None:
        self._n_vocab = int(lc.llama_vocab_n_tokens(vocab))
        self._chain = self._make_chain(request, eog, n_ctx_slot)

    def sample(self, ctx: Any, index: int) -> int:
        """Draw the next token from the logits at ``index`` of the last batch, and accept it."""
        return int(lc.llama_sampler_sample(self._chain, ctx, index))

    def free(self) -> None:
        lc.llama_sampler_free(self._chain)

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
