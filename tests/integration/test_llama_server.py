"""llama.cpp's C++ ``llama-server`` as a Corral worker (the command engine), end to end.

The binary is built from the llama.cpp source vendored in the pinned llama-cpp-python
sdist (``../shared/tools/build-llama-server``, about 11 minutes on 2 cores); CI does
not build it, so these tests skip, saying so, where it is absent. ``LLAMA_SERVER``
names another binary.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import ollama
import openai
import pytest

from corral.registry.store import Registry
from tests.support.models import CHAT, EMBED, model_file
from tests.support.server import CorralServer

BUILT = Path.home() / ".cache" / "llama-server" / "0.3.36" / "llama-server"
BINARY = Path(os.environ.get("LLAMA_SERVER", BUILT))
pytestmark = pytest.mark.skipif(
    not BINARY.is_file(),
    reason=f"llama-server is not built ({BINARY}): run ../shared/tools/build-llama-server",
)
COMMAND = (
    f"{BINARY} -m ${{MODEL_PATH}} --host ${{HOST}} --port ${{PORT}} -np ${{SLOTS}} "
    "-c ${CONTEXT_TOTAL} -t ${THREADS} --alias ${MODEL_NAME}"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    home = tmp_path_factory.mktemp("llama-server-home")
    store = Registry(home)
    store.import_path(model_file(CHAT), "chat")
    store.import_path(model_file(EMBED), "embed")
    command = {"engine": "command", "command": COMMAND, "slots": 2, "context": 1024}
    store.import_path(model_file(CHAT), "ls", params=command)
    # One slot: with -np 2 this llama-server mixes two inputs of one request in its
    # batch for this (non-causal) model: the first input's vector changes with the
    # second's text. Measured; Corral's own worker gives the single-input vectors.
    embeddings = {**command, "command": COMMAND + " --embeddings", "context": 512, "slots": 1}
    store.import_path(model_file(EMBED), "ls-embed", params=embeddings)
    store.close()
    srv = CorralServer(home).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: CorralServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.openai_url, api_key="x", max_retries=0) as c:
        yield c


def test_the_same_gguf_answers_alike_on_corral_and_on_llama_server(client: openai.OpenAI) -> None:
    """Greedy decoding on the same file and the same llama.cpp commit: the same text."""
    ask = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 12}
    ours = client.chat.completions.create(model="chat", temperature=0, **ask)  # type: ignore[call-overload]
    theirs = client.chat.completions.create(model="ls", temperature=0, **ask)  # type: ignore[call-overload]
    assert theirs.model == "ls:latest"
    assert theirs.choices[0].message.content == ours.choices[0].message.content
    assert theirs.usage is not None and ours.usage is not None
    assert theirs.usage.completion_tokens == ours.usage.completion_tokens == 12


def test_streams_with_and_without_usage(client: openai.OpenAI) -> None:
    ask = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": True}
    plain = list(client.chat.completions.create(model="ls", **ask))  # type: ignore[call-overload]
    assert plain and all(c.usage is None and c.model == "ls:latest" for c in plain)
    counted = list(
        client.chat.completions.create(
            model="ls",
            stream_options={"include_usage": True},
            **ask,  # type: ignore[call-overload]
        )
    )
    assert counted[-1].usage is not None and counted[-1].usage.completion_tokens == 5


def test_ollama_gets_counts_and_llama_servers_own_timings(server: CorralServer) -> None:
    with ollama.Client(host=server.url, timeout=60) as client:
        parts = list(
            client.chat(
                model="ls",
                messages=[{"role": "user", "content": "Hi"}],
                options={"num_predict": 6},
                stream=True,
            )
        )
    final = parts[-1]
    assert final.done and final.eval_count == 6 and final.prompt_eval_count
    # llama-server's own figures: generation of 6 tokens, not the whole request.
    assert final.eval_duration and 0 < final.eval_duration < (final.total_duration or 0)


def test_concurrent_requests_share_its_slots(client: openai.OpenAI) -> None:
    def ask(i: int) -> int:
        reply = client.chat.completions.create(
            model="ls", messages=[{"role": "user", "content": f"Say {i}"}], max_tokens=8
        )
        assert reply.usage is not None
        return reply.usage.completion_tokens

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(ask, range(6))) == [8] * 6


def test_embeddings_from_llama_server_match_corrals_own(client: openai.OpenAI) -> None:
    texts = ["hello world", "goodbye"]
    ours = client.embeddings.create(model="embed", input=texts)
    theirs = client.embeddings.create(model="ls-embed", input=texts)
    assert theirs.model == "ls-embed:latest"
    for a, b in zip(ours.data, theirs.data, strict=True):
        assert np.allclose(a.embedding, b.embedding, atol=1e-3)
