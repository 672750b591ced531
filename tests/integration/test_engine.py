"""The llama.cpp engine in-process, on real (tiny, random-weight) GGUF models."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from corral.engines import guidance
from corral.engines.base import (
    Event,
    Finished,
    GenerationRequest,
    SamplingParams,
    TextDelta,
    collect,
    stream_events,
)
from corral.engines.llamacpp.descriptor import LlamaCppParams
from corral.engines.llamacpp.engine import LlamaCppEngine
from corral.errors import InvalidRequest
from corral.registry.records import Capability
from corral.registry.synthetic import FIM_TOKENS
from tests.support import models

GREEDY = SamplingParams(temperature=0.0)
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def engine(chat_model_path: Path) -> Iterator[LlamaCppEngine]:
    eng = LlamaCppEngine(chat_model_path, LlamaCppParams(threads=1, slots=4, context_length=512))
    yield eng
    eng.close()


def prompt(engine: LlamaCppEngine, text: str = "The quick brown fox") -> list[int]:
    return engine.tokenize(text, add_special=True, parse_special=True)


async def test_capabilities(engine: LlamaCppEngine) -> None:
    caps = engine.capabilities
    assert caps.offers == {Capability.CHAT, Capability.COMPLETION}
    assert caps.context_length == 512 and caps.slots == 4
    assert engine.chat_template and "<|im_start|>" in engine.chat_template


async def test_greedy_matches_llama_cpp_direct(
    engine: LlamaCppEngine, chat_model_path: Path
) -> None:
    text = "Questions and answers, stories and"
    ours, finished = await collect(engine, GenerationRequest(prompt(engine, text), 48, GREEDY))
    again, _ = await collect(engine, GenerationRequest(prompt(engine, text), 48, GREEDY))
    direct = llama_cpp.Llama(
        str(chat_model_path), n_ctx=512, n_threads=1, verbose=False, flash_attn=True
    )
    expected = direct.create_completion(text, max_tokens=48, temperature=0.0)
    direct.close()
    assert ours == again
    assert ours == expected["choices"][0]["text"]
    assert finished.prompt_tokens == expected["usage"]["prompt_tokens"]
    # Corral counts the end-of-sequence token it sampled (as llama.cpp's server and vLLM
    # do); llama-cpp-python leaves it out.
    assert expected["choices"][0]["finish_reason"] == finished.reason == "stop"
    assert finished.completion_tokens == expected["usage"]["completion_tokens"] + 1


async def test_max_tokens_is_exact(engine: LlamaCppEngine) -> None:
    req = GenerationRequest(prompt(engine), 17, SamplingParams(seed=1), ignore_eos=True)
    _, finished = await collect(engine, req)
    assert finished == Finished("length", len(req.prompt_tokens), 17)


async def test_generation_stops_at_context_end(engine: LlamaCppEngine) -> None:
    req = GenerationRequest(prompt(engine), None, SamplingParams(seed=2), ignore_eos=True)
    _, finished = await collect(engine, req)
    assert finished.reason == "length"
    assert finished.prompt_tokens + finished.completion_tokens == 512


async def test_concurrent_requests_share_decode_steps(engine: LlamaCppEngine) -> None:
    """All four slots are busy at once: tokens of different requests interleave."""
    order: list[int] = []

    async def run(i: int) -> None:
        req = GenerationRequest(prompt(engine, f"request {i}"), 40, GREEDY, ignore_eos=True)
        async for event in stream_events(engine, req):
            if isinstance(event, TextDelta):
                order.append(i)

    await asyncio.gather(*(run(i) for i in range(4)))
    first_finish = min(max(k for k, v in enumerate(order) if v == i) for i in range(4))
    last_start = max(order.index(i) for i in range(4))
    assert last_start < first_finish


async def test_more_requests_than_slots_queue_and_all_finish(engine: LlamaCppEngine) -> None:
    reqs = [
        GenerationRequest(prompt(engine, f"q{i}"), 8, GREEDY, ignore_eos=True) for i in range(9)
    ]
    results = await asyncio.gather(*(collect(engine, r) for r in reqs))
    assert all(f.completion_tokens == 8 for _, f in results)
    assert engine.stats()["slots_busy"] == 0


async def test_cancel_frees_the_slot_at_once(engine: LlamaCppEngine) -> None:
    req = GenerationRequest(prompt(engine), 400, GREEDY, ignore_eos=True)
    seen = 0
    async for event in stream_events(engine, req):
        seen += isinstance(event, TextDelta)
        if seen == 3:
            break  # leaving the loop cancels the request
    for _ in range(100):
        if engine.stats()["slots_busy"] == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.stats()["slots_busy"] == 0


async def test_stop_strings(engine: LlamaCppEngine) -> None:
    full, _ = await collect(engine, GenerationRequest(prompt(engine), 40, GREEDY, ignore_eos=True))
    stop = full[10:14]
    cut, finished = await collect(
        engine, GenerationRequest(prompt(engine), 40, GREEDY, stop=[stop], ignore_eos=True)
    )
    assert finished.reason == "stop"
    assert cut == full[: full.index(stop)]


async def test_seed_reproduces_and_differs(engine: LlamaCppEngine) -> None:
    def req(seed: int) -> GenerationRequest:
        return GenerationRequest(
            prompt(engine), 30, SamplingParams(seed=seed, top_k=50), ignore_eos=True
        )

    a, _ = await collect(engine, req(7))
    b, _ = await collect(engine, req(7))
    c, _ = await collect(engine, req(8))
    assert a == b and a != c


async def test_logit_bias_forces_and_bans_tokens(engine: LlamaCppEngine) -> None:
    target = engine.tokenize(" fox", add_special=False, parse_special=False)
    assert len(target) == 1
    forced = SamplingParams(temperature=1.0, seed=3, logit_bias={target[0]: 100.0})
    text, _ = await collect(engine, GenerationRequest(prompt(engine), 5, forced, ignore_eos=True))
    assert text == " fox" * 5
    greedy_text, _ = await collect(
        engine, GenerationRequest(prompt(engine), 20, GREEDY, ignore_eos=True)
    )
    first = engine.tokenize(greedy_text, add_special=False, parse_special=False)[0]
    banned = SamplingParams(temperature=0.0, logit_bias={first: -100.0})
    text, _ = await collect(engine, GenerationRequest(prompt(engine), 20, banned, ignore_eos=True))
    assert text != greedy_text


async def test_repeat_penalty_changes_output(engine: LlamaCppEngine) -> None:
    base, _ = await collect(engine, GenerationRequest(prompt(engine), 60, GREEDY, ignore_eos=True))
    penalized = SamplingParams(temperature=0.0, repeat_penalty=1.5, presence_penalty=1.0)
    text, _ = await collect(
        engine, GenerationRequest(prompt(engine), 60, penalized, ignore_eos=True)
    )
    assert text != base


async def test_prefix_cache_skips_the_shared_prompt(engine: LlamaCppEngine) -> None:
    """A follow-up whose prompt extends an earlier one evaluates only the new tokens."""
    long = prompt(engine, "Corral keeps many models in one place " * 8)
    await collect(engine, GenerationRequest(long, 10, GREEDY, ignore_eos=True))
    before = engine.stats()
    follow_up = [*long, *engine.tokenize(" and more", add_special=False, parse_special=False)]
    await collect(engine, GenerationRequest(follow_up, 10, GREEDY, ignore_eos=True))
    after = engine.stats()
    assert after["prompt_tokens_cached"] - before["prompt_tokens_cached"] == len(long)
    evaluated = after["prompt_tokens_evaluated"] - before["prompt_tokens_evaluated"]
    assert evaluated == len(follow_up) - len(long)


async def test_identical_prompt_reevaluates_only_its_last_token(engine: LlamaCppEngine) -> None:
    tokens = prompt(engine, "the same prompt twice, word for word")
    first, _ = await collect(engine, GenerationRequest(tokens, 12, GREEDY, ignore_eos=True))
    before = engine.stats()["prompt_tokens_evaluated"]
    second, _ = await collect(engine, GenerationRequest(tokens, 12, GREEDY, ignore_eos=True))
    assert engine.stats()["prompt_tokens_evaluated"] - before == 1
    assert first == second


async def test_seeded_sampling_matches_llama_cpp_and_rejoins_split_characters(
    raw_model_path: Path,
) -> None:
    """Same seed and sampler chain as llama-cpp-python: the same tokens, byte for byte.

    The byte-level model splits characters across tokens and emits invalid sequences;
    the stream must equal the whole output's bytes decoded at once (U+FFFD for invalid
    bytes), with no character torn in two at a chunk boundary.
    """
    seed = 4
    eng = LlamaCppEngine(raw_model_path, LlamaCppParams(threads=1, slots=2, context_length=1024))
    direct = llama_cpp.Llama(
        str(raw_model_path), n_ctx=1024, n_threads=1, verbose=False, seed=seed, flash_attn=True
    )
    try:
        tokens = prompt(eng, "x")
        sampling = SamplingParams(temperature=1.0, top_k=40, top_p=0.95, min_p=0.05, seed=seed)
        pieces: list[str] = []
        async for event in stream_events(eng, GenerationRequest(tokens, 600, sampling)):
            if isinstance(event, TextDelta):
                pieces.append(event.text)
        generated: list[int] = []
        for token in direct.generate(tokens, temp=1.0, top_k=40, top_p=0.95, min_p=0.05):
            if llama_cpp.llama_vocab_is_eog(direct._model.vocab, token) or len(generated) == 600:
                break
            generated.append(token)
        expected = direct.detokenize(generated).decode("utf-8", errors="replace")
        assert "".join(pieces) == expected
        assert any(ord(c) > 127 and c != "\ufffd" for c in expected), "no multi-byte output"
    finally:
        direct.close()
        eng.close()


async def test_embeddings_are_normalised_and_deterministic(embed_model_path: Path) -> None:
    eng = LlamaCppEngine(embed_model_path, LlamaCppParams(threads=1, slots=4))
    try:
        assert eng.capabilities.offers == {Capability.EMBEDDINGS}
        texts = ["hello world", "a different sentence entirely", "hello world"]
        vecs = await eng.embed(
            [eng.tokenize(t, add_special=True, parse_special=False) for t in texts]
        )
        assert len(vecs) == 3 and len(vecs[0]) == eng.capabilities.embedding_length
        for v in vecs:
            assert abs(np.linalg.norm(v) - 1.0) < 1e-5
        assert np.allclose(vecs[0], vecs[2])
        assert not np.allclose(vecs[0], vecs[1])
        alone = await eng.embed([eng.tokenize(texts[1], add_special=True, parse_special=False)])
        assert np.allclose(alone[0], vecs[1], atol=1e-5)
    finally:
        eng.close()


async def test_events_arrive_on_the_callers_loop(engine: LlamaCppEngine) -> None:
    threads: set[str] = set()
    events: list[Event] = []
    async for event in stream_events(engine, GenerationRequest(prompt(engine), 5, GREEDY)):
        threads.add(threading.current_thread().name)
        events.append(event)
    assert threads == {threading.current_thread().name}
    assert isinstance(events[-1], Finished)


# --- grammars ---------------------------------------------------------------------------

DIGITS = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def schema_grammar(engine: LlamaCppEngine, schema: dict[str, object] | None) -> str:
    """What the worker hands the engine for ``response_format``: checked, then sent."""
    if schema is None:
        grammar = guidance.any_json_object_grammar()
    else:
        grammar = guidance.json_schema_grammar(schema, param="p")
    engine.check_grammar(grammar, param="p")
    return grammar


async def test_grammar_holds_output_and_ends_it(engine: LlamaCppEngine) -> None:
    grammar = schema_grammar(engine, DIGITS)
    for seed in range(4):
        req = GenerationRequest(prompt(engine), 200, SamplingParams(seed=seed), grammar=grammar)
        events = [e async for e in stream_events(engine, req)]
        deltas = [e.text for e in events if isinstance(e, TextDelta)]
        finished = events[-1]
        assert isinstance(finished, Finished) and finished.reason == "stop"
        assert set(json.loads("".join(deltas))) == {"n"}
        # ASCII output: one delta per token, and perhaps one token more, the
        # end-of-generation token (after a closing brace, nothing else may follow).
        assert len(deltas) <= finished.completion_tokens <= len(deltas) + 1


async def test_grammar_overrides_ignore_eos_and_survives_penalties(
    engine: LlamaCppEngine,
) -> None:
    """ignore_eos would ban the only token a complete grammar allows; penalties feed the
    prompt to their sampler, and a grammar fed prompt tokens makes llama.cpp abort."""
    sampling = SamplingParams(seed=1, repeat_penalty=1.3, frequency_penalty=0.5)
    req = GenerationRequest(
        prompt(engine),
        200,
        sampling,
        ignore_eos=True,
        grammar=schema_grammar(engine, DIGITS),
    )
    text, finished = await collect(engine, req)
    assert finished.reason == "stop" and "n" in json.loads(text)


async def test_grammar_cut_short_by_max_tokens(engine: LlamaCppEngine) -> None:
    grammar = schema_grammar(engine, None)
    text, finished = await collect(
        engine, GenerationRequest(prompt(engine), 3, SamplingParams(seed=0), grammar=grammar)
    )
    assert finished == Finished("length", finished.prompt_tokens, 3) and text.startswith("{")


async def test_grammar_requests_batch_with_free_ones(engine: LlamaCppEngine) -> None:
    grammar = schema_grammar(engine, DIGITS)
    free = GenerationRequest(prompt(engine), 40, SamplingParams(seed=2), ignore_eos=True)
    held = GenerationRequest(prompt(engine), 200, SamplingParams(seed=2), grammar=grammar)
    (free_text, free_end), (held_text, held_end) = await asyncio.gather(
        collect(engine, free), collect(engine, held)
    )
    assert free_end.completion_tokens == 40 and held_end.reason == "stop"
    assert "n" in json.loads(held_text)
    with pytest.raises(json.JSONDecodeError):
        json.loads(free_text)


def test_capabilities_declare_structured_output(engine: LlamaCppEngine) -> None:
    assert engine.capabilities.structured_output


async def test_regex_and_gbnf_grammars_hold_output(engine: LlamaCppEngine) -> None:
    regex = guidance.regex_grammar(r"(yes|no), [0-9]{3}", param="p")
    gbnf = guidance.text_grammar('root ::= "a" [xyz]+ "b"', param="p")
    for grammar, shape in ((regex, r"(yes|no), [0-9]{3}"), (gbnf, r"a[xyz]+b")):
        engine.check_grammar(grammar, param="p")
        for seed in range(3):
            req = GenerationRequest(prompt(engine), 60, SamplingParams(seed=seed), grammar=grammar)
            text, finished = await collect(engine, req)
            assert re.fullmatch(shape, text), text
            assert finished.reason == "stop" or len(text) >= 60


async def test_the_schema_that_crashed_a_worker_runs(engine: LlamaCppEngine) -> None:
    """Issue 13: ``"maxLength": 32767`` killed the worker through llama.cpp's grammar
    parser. On llguidance it compiles at once and holds the output."""
    schema = {
        "type": "object",
        "properties": {"notes": {"type": "string", "maxLength": 32767}},
        "required": ["notes"],
    }
    grammar = schema_grammar(engine, schema)
    text, finished = await collect(
        engine, GenerationRequest(prompt(engine), 40, SamplingParams(seed=3), grammar=grammar)
    )
    assert text.startswith("{") and finished.completion_tokens <= 40
    if finished.reason == "stop":
        assert "notes" in json.loads(text)


@pytest.fixture
def two_slots(chat_model_path: Path) -> Iterator[LlamaCppEngine]:
    eng = LlamaCppEngine(chat_model_path, LlamaCppParams(threads=1, slots=2, context_length=512))
    yield eng
    eng.close()


async def fill_slots(engine: LlamaCppEngine, label: str) -> None:
    """Run one unrelated request in every slot (of two), overwriting what they held."""
    await asyncio.gather(
        *(
            collect(engine, GenerationRequest(prompt(engine, f"{label} {i} " * 5), 4, GREEDY))
            for i in range(2)
        )
    )


async def test_a_prompt_pushed_out_of_every_slot_comes_back_from_the_prompt_cache(
    two_slots: LlamaCppEngine,
) -> None:
    """More conversations than slots: a history overwritten in its slot is restored
    from RAM, and greedy output is what evaluating it afresh gives."""
    history = prompt(two_slots, "Corral keeps many models in one place " * 6)
    first, _ = await collect(two_slots, GenerationRequest(history, 16, GREEDY, ignore_eos=True))
    await fill_slots(two_slots, "other prompt number")
    await fill_slots(two_slots, "and yet another")
    assert two_slots.stats()["prompt_cache_entries"] >= 1
    again, finished = await collect(
        two_slots, GenerationRequest(history, 16, GREEDY, ignore_eos=True)
    )
    assert again == first
    assert finished.prompt_tokens_cached == len(history) - 1
    assert two_slots.stats()["prompt_cache_restored"] == 1


async def test_a_new_request_copies_the_prefix_a_running_one_holds(
    two_slots: LlamaCppEngine, chat_model_path: Path
) -> None:
    system = "A shared system prompt that many requests begin with " * 4
    second = prompt(two_slots, system + "and then the second user turn")
    fresh = LlamaCppEngine(chat_model_path, LlamaCppParams(threads=1, slots=1, context_length=512))
    try:
        expected, _ = await collect(fresh, GenerationRequest(second, 10, GREEDY, ignore_eos=True))
    finally:
        fresh.close()
    started = asyncio.Event()

    def sink(event: Event) -> None:
        if isinstance(event, TextDelta):
            started.set()

    first = prompt(two_slots, system + "first")
    running = two_slots.submit(GenerationRequest(first, 200, GREEDY, ignore_eos=True), sink)
    await asyncio.wait_for(started.wait(), 30)
    text, finished = await collect(
        two_slots, GenerationRequest(second, 10, GREEDY, ignore_eos=True)
    )
    running.cancel()
    shared = len(prompt(two_slots, system))
    assert finished.prompt_tokens_cached >= shared - 2  # a word boundary may tokenize apart
    assert text == expected


async def test_prompt_cache_off_keeps_nothing(chat_model_path: Path) -> None:
    params = LlamaCppParams(threads=1, slots=2, context_length=512, prompt_cache_mib=0)
    engine = LlamaCppEngine(chat_model_path, params)
    try:
        history = prompt(engine, "Corral keeps many models in one place " * 6)
        await collect(engine, GenerationRequest(history, 4, GREEDY))
        await fill_slots(engine, "other prompt number")
        _, finished = await collect(engine, GenerationRequest(history, 4, GREEDY))
        assert finished.prompt_tokens_cached <= 1  # the BOS token, in any slot
        assert engine.stats()["prompt_cache_saved"] == 0
    finally:
        engine.close()


async def test_fill_in_the_middle_on_a_vocabulary_with_fim_tokens(tmp_path: Path) -> None:
    spec = models.SyntheticSpec(name="test-fim", fim=True, context_length=512, seed=5)
    engine = LlamaCppEngine(
        models.write_model(tmp_path / "fim.gguf", spec),
        LlamaCppParams(threads=1, slots=1, context_length=512),
    )
    try:
        tokens = engine.infill_tokens("def add(a, b):", "    return c")
        marks = [engine.tokenize(t, add_special=False, parse_special=True)[0] for t in FIM_TOKENS]
        pre, suf, mid = marks
        assert tokens[-1] == mid and pre in tokens and suf in tokens
        assert tokens.index(pre) < tokens.index(suf)
        _, finished = await collect(engine, GenerationRequest(tokens, 8, GREEDY))
        assert finished.prompt_tokens == len(tokens)
    finally:
        engine.close()


def test_a_vocabulary_without_fim_tokens_refuses_suffix(engine: LlamaCppEngine) -> None:
    with pytest.raises(InvalidRequest) as info:
        engine.infill_tokens("a", "b")
    assert info.value.param == "suffix"
