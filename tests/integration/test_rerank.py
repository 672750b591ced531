"""Reranking on a GGUF reranker (llama.cpp rank pooling) through the real server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import llama_cpp
import pytest

from tests.support import models
from tests.support.server import CorralServer

MODEL = "test-rerank"
DOCS = [
    "A fox is a small wild animal.",
    "Servers keep many models in one place.",
    {"text": "Foxes hunt at night."},
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="module")
def reranker(server: CorralServer) -> Iterator[str]:
    path = models.model_file(models.RERANK)
    imported = httpx.post(
        server.url + "/admin/models/import", json={"path": str(path), "name": MODEL}, timeout=60
    )
    assert imported.status_code == 201, imported.text
    yield MODEL
    httpx.delete(server.url + f"/admin/models/{MODEL}", timeout=60)


def rerank(server: CorralServer, route: str = "/v1/rerank", **body: object) -> httpx.Response:
    payload = {"model": MODEL, "query": "What do foxes do?", "documents": DOCS, **body}
    return httpx.post(server.url + route, json=payload, timeout=120)


def direct_scores(query: str, texts: list[str]) -> list[float]:
    """llama.cpp's own rank pooling, one pair at a time, as llama-server formats them
    (BOS, query, document: this vocabulary adds no EOS or SEP)."""
    llm = llama_cpp.Llama(
        str(models.model_file(models.RERANK)),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_RANK,
        n_ctx=512,
        verbose=False,
    )
    try:
        scores = []
        for text in texts:
            tokens = llm.tokenize(query.encode(), add_bos=True, special=False)
            tokens += llm.tokenize(text.encode(), add_bos=False, special=False)
            llm._ctx.kv_cache_clear()
            batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
            for i, token in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, 1
            batch.n_tokens = len(tokens)
            assert llama_cpp.llama_decode(llm._ctx.ctx, batch) == 0
            scores.append(float(llama_cpp.llama_get_embeddings_seq(llm._ctx.ctx, 0)[0]))
            llama_cpp.llama_batch_free(batch)
        return scores
    finally:
        llm.close()


def test_documents_come_back_ranked_with_llama_cpps_scores(
    server: CorralServer, reranker: str
) -> None:
    reply = rerank(server)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    results = body["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2, 3]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    texts = [d if isinstance(d, str) else d["text"] for d in DOCS]
    assert [r["document"]["text"] for r in results] == [texts[r["index"]] for r in results]
    expected = direct_scores("What do foxes do?", texts)
    by_index = {r["index"]: r["relevance_score"] for r in results}
    assert [by_index[i] for i in range(4)] == pytest.approx(expected, rel=1e-3)
    assert body["usage"]["prompt_tokens"] > 20


def test_top_n_return_documents_and_other_routes(server: CorralServer, reranker: str) -> None:
    full = rerank(server).json()["results"]
    top = rerank(server, route="/v2/rerank", top_n=2, return_documents=False).json()["results"]
    assert [r["index"] for r in top] == [r["index"] for r in full[:2]]
    assert all("document" not in r for r in top)
    assert rerank(server, route="/rerank").status_code == 200


def test_bad_requests_and_the_wrong_model(server: CorralServer, reranker: str) -> None:
    assert rerank(server, documents=[]).status_code == 400
    assert rerank(server, top_n=0).status_code == 400
    wrong = rerank(server, model="test-chat")
    assert wrong.status_code == 400 and "not a reranker" in wrong.json()["error"]["message"]
    chat = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    assert chat.status_code == 400 and "reranker" in chat.json()["error"]["message"]
    models_list = httpx.get(server.url + "/v1/models", timeout=30).json()["data"]
    card = next(m for m in models_list if m["id"].startswith(MODEL))
    assert card["corral"]["capabilities"] == ["rerank"]


def test_ollama_style_rerank(server: CorralServer, reranker: str) -> None:
    full = rerank(server).json()["results"]
    reply = rerank(server, route="/api/rerank", top_n=3)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == MODEL
    assert [r["index"] for r in body["results"]] == [r["index"] for r in full[:3]]
    missing = rerank(server, route="/api/rerank", model="no-such-model")
    assert missing.status_code == 404 and isinstance(missing.json()["error"], str)
