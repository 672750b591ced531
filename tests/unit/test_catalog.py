"""The engine catalog: which engine runs a model, what it can do, its typed parameters."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from corral.engines.catalog import Catalog, load_catalog
from corral.engines.llamacpp.descriptor import LlamaCppParams
from corral.engines.llamacpp.descriptor import descriptor as llamacpp
from corral.errors import InvalidRequest, UnsupportedCapability, UnsupportedSchema
from corral.registry.gguf_info import ModelInfo
from corral.registry.records import Capability, ModelRecord, capability_names
from tests.support.fake_engine import ENGINES_ENV
from tests.support.fake_engine import descriptor as fake
from tests.support.fake_params import FakeParams

TEXT = ModelInfo("gguf", "llama", 1, "F16", 2048, 64, True, False)
EMBED = replace(TEXT, architecture="bert", embedding=True)


def model(info: ModelInfo = TEXT, **fields: object) -> ModelRecord:
    return replace(ModelRecord("m:latest", Path("/m.gguf"), 1 << 20, "abc", 0.0, info), **fields)  # type: ignore[arg-type]


@pytest.fixture
def catalog() -> Catalog:
    base = LlamaCppParams(threads=2, slots=4, context_length=4096, batch_size=512)
    return Catalog([llamacpp, fake], defaults={"llamacpp": base})


def test_format_picks_the_engine_unless_one_is_declared(catalog: Catalog) -> None:
    assert catalog.for_record(model()).name == "llamacpp"
    assert catalog.for_record(model(engine="fake")).name == "fake"
    with pytest.raises(UnsupportedCapability, match="nope engine, which this server does not"):
        catalog.for_record(model(engine="nope"))
    with pytest.raises(UnsupportedCapability, match="no engine for that format"):
        catalog.for_record(model(format="onnx"))
    assert catalog.capabilities(model(format="onnx")) == frozenset()


def test_check_serves_says_what_the_model_is(catalog: Catalog) -> None:
    assert catalog.check_serves(model(), Capability.CHAT) is llamacpp
    with pytest.raises(UnsupportedCapability, match="does not produce embeddings"):
        catalog.check_serves(model(), Capability.EMBEDDINGS)
    with pytest.raises(UnsupportedCapability, match="is an embedding model"):
        catalog.check_serves(model(EMBED), Capability.COMPLETION)
    assert capability_names(catalog.capabilities(model())) == ["completion", "chat"]


def test_params_are_defaults_then_declared_then_changes(catalog: Catalog) -> None:
    declared = model(params={"context": 1024, "slots": 6, "keep_alive": "1h", "pinned": True})
    params = catalog.params(declared)
    assert params == LlamaCppParams(threads=2, slots=6, context_length=1024, batch_size=512)
    changed = catalog.params(declared, {"batch_size": 256, "slots": None})
    assert (changed.slots, changed.batch_size) == (6, 256)  # type: ignore[attr-defined]
    fake_params = catalog.params(model(engine="fake", params={"tokens": 3}))
    assert isinstance(fake_params, FakeParams) and fake_params.tokens == 3


def test_bad_parameter_is_a_400_naming_it(catalog: Catalog) -> None:
    with pytest.raises(InvalidRequest) as info:
        catalog.params(model(params={"slots": "x"}))
    assert info.value.param == "slots" and "llamacpp" in info.value.message
    with pytest.raises(InvalidRequest, match="flash_attention"):
        catalog.check_configuration(model(), {"flash_attention": "sometimes"})
    with pytest.raises(InvalidRequest, match="batch_size"):
        catalog.merge(llamacpp, catalog.defaults["llamacpp"], changes={"batch_size": 1})
    with pytest.raises(UnsupportedCapability, match="nope"):
        catalog.check_configuration(model(), {"engine": "nope"})
    catalog.check_configuration(model(), {"engine": "fake", "tokens": 2})  # valid for fake


def test_llamacpp_precheck_refuses_what_its_grammar_cannot_enforce(catalog: Catalog) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}},
        },
    }
    with pytest.raises(UnsupportedSchema, match="uniqueItems"):
        catalog.precheck(model(), Capability.CHAT, body)
    catalog.precheck(model(), Capability.COMPLETION, {"model": "m", "prompt": "hi"})
    with pytest.raises(UnsupportedSchema, match="look-around"):
        catalog.precheck(
            model(),
            Capability.COMPLETION,
            {"model": "m", "prompt": "hi", "json_schema": {"type": "string", "pattern": "(?=a)"}},
        )
    catalog.precheck(model(engine="fake"), Capability.CHAT, body)  # the fake checks nothing


def test_llamacpp_estimate_grows_with_slots_and_context(catalog: Catalog) -> None:
    info = replace(TEXT, block_count=4, head_count_kv=4, key_length=32, value_length=32)
    record = model(info)
    small = catalog.estimate(record, LlamaCppParams(slots=1, context_length=512))
    big = catalog.estimate(record, LlamaCppParams(slots=4, context_length=2048))
    assert small.weights == big.weights == record.size
    assert big.kv_cache == 16 * small.kv_cache  # 4x the slots, 4x the cells


def test_describe_keeps_the_declared_engine_and_adds_where_it_runs(catalog: Catalog) -> None:
    shown = catalog.describe(model())
    assert shown["engine"] is None and shown["runs_on"] == "llamacpp"
    assert shown["capabilities"] == ["completion", "chat"]


def test_load_catalog_adds_named_engines_with_env_defaults() -> None:
    catalog = load_catalog([ENGINES_ENV], environ={"CORRAL_SLOTS": "3", "CORRAL_TOKENS": "5"})
    names = [d.name for d in catalog.descriptors]
    assert names == ["llamacpp", "transformers", "onnx", "vllm", "command", "fake"]
    assert catalog.defaults["fake"].slots == 3 and catalog.defaults["llamacpp"].slots == 3
    assert catalog.defaults["fake"].tokens == 5  # type: ignore[attr-defined]
    assert catalog.sources[("fake", "tokens")] == "env"
