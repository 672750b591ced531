"""The Ollama API, spoken by the official ``ollama`` Python client, against the real server.

Most tests share the session server (models test-chat, test-raw, test-embed). The
ones that add, remove or pull models, or kill a worker, have a server of their own
(registering a model reads its header with ``gguf``, which would leave numpy in the
shared gateway), which reaches a local stand-in for the Hugging Face Hub.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from tests.conftest import SERVER_SETTINGS, install_test_models
from tests.support import models
from tests.support.fake_hub import FakeHub
from tests.support.server import CorralServer, pid_alive, wait_until

HI = [{"role": "user", "content": "Say hi"}]
GREEDY = {"temperature": 0, "num_predict": 8}


REPO = "org/tiny-GGUF"


@pytest.fixture
def client(server: CorralServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    home = tmp_path_factory.mktemp("ollama-home")
    install_test_models(home).close()
    with FakeHub() as hub:
        hub.add_repo(REPO, {"Tiny-Q4_K_M.gguf": models.model_file(models.CHAT)})
        srv = CorralServer(home, **SERVER_SETTINGS)
        srv.env["HF_ENDPOINT"] = hub.url
        srv.env.pop("HF_TOKEN", None)
        yield srv.start()
        srv.stop()


@pytest.fixture
def own_client(own_server: CorralServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=own_server.url, timeout=60) as c:
        yield c


@pytest.fixture(autouse=True)
def server_still_works(server: CorralServer) -> Iterator[None]:
    yield
    with ollama.Client(host=server.url, timeout=60) as c:
        reply = c.chat(model="test-chat", messages=HI, options={"num_predict": 2})
    assert reply.done and reply.eval_count == 2


def post(server: CorralServer, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(server.url + path, timeout=60, **kwargs)


def assert_ollama_error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    for word in words:
        assert word in body["error"]
    return str(body["error"])


def assert_durations(reply: Any, evals: int | None = None) -> None:
    """Ollama's counts and durations: present, positive, and adding up."""
    assert reply.done is True
    assert reply.prompt_eval_count > 0 and reply.prompt_eval_duration > 0
    assert reply.eval_count > 0 and reply.eval_duration > 0
    assert reply.load_duration > 0
    assert reply.prompt_eval_duration + reply.eval_duration <= reply.total_duration
    assert reply.load_duration <= reply.total_duration
    if evals is not None:
        assert reply.eval_count == evals
    # A duration in nanoseconds, not seconds or milliseconds: this one is under a minute.
    assert 1_000 < reply.total_duration < 60e9


# --- health and version -------------------------------------------------------------


def test_root_says_ollama_is_running_and_version_is_semver(server: CorralServer) -> None:
    for method in ("GET", "HEAD"):
        reply = httpx.request(method, server.url + "/")
        assert reply.status_code == 200
    assert httpx.get(server.url + "/").text == "Ollama is running"
    version = httpx.get(server.url + "/api/version").json()["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)


# --- chat and generate --------------------------------------------------------------


def test_chat_whole_and_streamed_agree(client: ollama.Client) -> None:
    whole = client.chat(model="test-chat", messages=HI, options=GREEDY)
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.done_reason == "length" and whole.model == "test-chat"
    assert_durations(whole, evals=8)

    parts = list(client.chat(model="test-chat", messages=HI, options=GREEDY, stream=True))
    *pieces, final = parts
    assert pieces and all(not p.done and p.message.content for p in pieces)
    assert "".join(p.message.content or "" for p in pieces) == whole.message.content
    assert final.message.content == "" and final.done_reason == "length"
    assert final.prompt_eval_count == whole.prompt_eval_count
    assert_durations(final, evals=8)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", final.created_at or "")


def test_streaming_is_the_default_and_is_ndjson(server: CorralServer) -> None:
    body = {"model": "test-chat", "messages": HI, "options": {"num_predict": 4}}
    with httpx.stream("POST", server.url + "/api/chat", json=body, timeout=60) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert lines[-1]["eval_count"] == 4 and "error" not in lines[-1]


def test_generate_follows_the_models_template_raw_and_a_given_template(
    client: ollama.Client,
) -> None:
    chat = client.chat(
        model="test-chat",
        messages=[{"role": "system", "content": "Be brief."}, *HI],
        options=GREEDY,
    )
    templated = client.generate(
        model="test-chat", prompt="Say hi", system="Be brief.", options=GREEDY
    )
    assert templated.response == chat.message.content  # same chat template, same prompt
    assert templated.context is None
    assert_durations(templated, evals=8)

    raw = client.generate(model="test-chat", prompt="Once upon", raw=True, options=GREEDY)
    given = client.generate(
        model="test-chat", prompt="Once upon", template="{{ .Prompt }}", options=GREEDY
    )
    assert raw.response and given.response == raw.response
    assert raw.prompt_eval_count < templated.prompt_eval_count  # no template around it

    streamed = list(
        client.generate(
            model="test-chat", prompt="Once upon", raw=True, options=GREEDY, stream=True
        )
    )
    assert "".join(p.response or "" for p in streamed) == raw.response
    assert_durations(streamed[-1], evals=8)


def test_stop_and_num_predict_options_take_effect(client: ollama.Client) -> None:
    free = client.generate(model="test-chat", prompt="Once upon", raw=True, options=GREEDY)
    word = free.response.split()[1] if len(free.response.split()) > 1 else free.response[1:3]
    stopped = client.generate(
        model="test-chat", prompt="Once upon", raw=True, options={**GREEDY, "stop": [word]}
    )
    assert word not in stopped.response and stopped.done_reason == "stop"
    assert free.response.startswith(stopped.response)
    short = client.generate(
        model="test-chat", prompt="Once upon", raw=True, options={"num_predict": 3}
    )
    assert short.eval_count == 3 and short.done_reason == "length"


def test_format_schema_constrains_the_reply(client: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["age", "ok"],
        "additionalProperties": False,
    }
    for seed in range(2):  # random weights: only the schema keeps the reply in shape
        options = {"seed": seed, "num_predict": 300}
        whole = client.chat(model="test-chat", messages=HI, format=schema, options=options)
        parts = client.generate(
            model="test-chat", prompt="Say hi", format=schema, options=options, stream=True
        )
        raw = client.generate(
            model="test-chat", prompt="{", raw=True, format=schema, options=options
        )
        texts = (whole.message.content or "", "".join(p.response or "" for p in parts))
        for text in (*texts, raw.response):
            reply = json.loads(text)
            assert set(reply) == {"age", "ok"} and isinstance(reply["ok"], bool), text


def test_tools_and_tool_results_are_accepted(client: ollama.Client) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    reply = client.chat(model="test-chat", messages=messages, tools=[tool], options=GREEDY)
    assert reply.done and reply.eval_count == 8


# --- embeddings ---------------------------------------------------------------------


def test_embed_and_legacy_embeddings(client: ollama.Client) -> None:
    reply = client.embed(model="test-embed", input=["the sky is blue", "grass"])
    assert len(reply.embeddings) == 2 and len(reply.embeddings[0]) == len(reply.embeddings[1])
    assert math.isclose(math.hypot(*reply.embeddings[0]), 1.0, rel_tol=1e-4)
    assert reply.prompt_eval_count and reply.prompt_eval_count > 2
    assert reply.load_duration is not None and reply.total_duration is not None
    assert 0 < reply.load_duration <= reply.total_duration
    assert len(client.embed(model="test-embed", input="x", dimensions=16).embeddings[0]) == 16

    single = client.embed(model="test-embed", input="the sky is blue").embeddings[0]
    legacy = client.embeddings(model="test-embed", prompt="the sky is blue").embedding
    assert legacy == pytest.approx(single, abs=1e-6)
    assert single == pytest.approx(reply.embeddings[0], abs=1e-5)
    assert client.embed(model="test-embed", input=[]).embeddings == []


# --- models: list, show, ps, copy, delete, load and unload --------------------------


def test_list_and_show(client: ollama.Client, server: CorralServer) -> None:
    listed = {m.model: m for m in client.list().models}
    assert {"test-chat:latest", "test-raw:latest", "test-embed:latest"} <= set(listed)
    chat = listed["test-chat:latest"]
    path = models.model_file(models.CHAT)
    assert chat.size == path.stat().st_size and chat.digest and len(chat.digest) == 64
    assert chat.details is not None and chat.details.format == "gguf"
    assert chat.details.family == "llama" and chat.details.parameter_size == "2.0M"
    assert chat.modified_at is not None

    shown = client.show("test-chat")
    assert shown.capabilities == ["completion"]
    assert shown.modelinfo is not None
    info = shown.modelinfo
    assert info["general.architecture"] == "llama"
    assert info["llama.context_length"] == 4096 and info["llama.embedding_length"] == 192
    assert info["general.parameter_count"] > 1_000_000
    assert info["tokenizer.ggml.tokens"] == []  # long arrays stay out unless verbose
    assert "<|im_start|>" in (shown.template or "")
    assert shown.details is not None and shown.details.quantization_level == "F16"
    assert "FROM " in (shown.modelfile or "")
    # The context requests get here (the server's 2048, under the model's 4096).
    assert (shown.parameters or "").split() == ["num_ctx", "2048"]
    assert "PARAMETER num_ctx 2048" in (shown.modelfile or "")
    assert client.show("test-embed").capabilities == ["embedding"]
    verbose = post(server, "/api/show", json={"model": "test-chat", "verbose": True}).json()
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) == 559  # the whole vocabulary


def test_copy_load_ps_unload_delete(own_client: ollama.Client, own_server: CorralServer) -> None:
    client, server = own_client, own_server
    assert client.copy("test-chat", "ollama-copy").status == "success"
    try:
        loaded = client.generate(model="ollama-copy", prompt="")
        assert loaded.done and loaded.done_reason == "load"
        running = {m.model: m for m in client.ps().models}
        assert "ollama-copy:latest" in running
        assert running["ollama-copy:latest"].expires_at is not None

        unloaded = client.chat(model="ollama-copy", messages=[], keep_alive=0)
        assert unloaded.done_reason == "unload"
        assert "ollama-copy:latest" not in {m.model for m in client.ps().models}

        client.chat(model="ollama-copy", messages=HI, options={"num_predict": 2})
        pid = server.worker("ollama-copy:latest")["pid"]
    finally:
        assert client.delete("ollama-copy").status == "success"
    assert wait_until(lambda: not pid_alive(pid), 10)  # delete stopped the worker first
    assert "ollama-copy:latest" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="ollama-copy", messages=HI)
    assert err.value.status_code == 404
    for call in (lambda: client.delete("ollama-copy"), lambda: client.copy("nope", "x")):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 404


def test_worker_dying_mid_stream_ends_with_an_error_line(
    own_client: ollama.Client, own_server: CorralServer
) -> None:
    client, server = own_client, own_server
    client.copy("test-chat", "ollama-doomed")
    try:
        client.generate(model="ollama-doomed", prompt="")  # load it
        pid = server.worker("ollama-doomed:latest")["pid"]
        # Greedy, this prompt runs to the token limit (seconds) without an end token.
        options = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 1500}
        stream = client.generate(
            model="ollama-doomed", prompt="hello world", raw=True, stream=True, options=options
        )
        assert not next(stream).done
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ollama.ResponseError) as err:
            for part in stream:
                assert not part.done
        assert "crashed" in err.value.error and "-9" in err.value.error
    finally:
        client.delete("ollama-doomed")


# --- bad input: Ollama's error shape and status, and the server keeps working ------


def test_unknown_model_is_a_404_everywhere(client: ollama.Client) -> None:
    calls = [
        lambda: client.chat(model="no-such-model", messages=HI),
        lambda: client.generate(model="no-such-model", prompt="x"),
        lambda: client.embed(model="no-such-model", input="x"),
        lambda: client.show("no-such-model"),
        lambda: client.delete("no-such-model"),
    ]
    for call in calls:
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 404
        assert err.value.error == 'model "no-such-model" not found, try pulling it first'


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/api/chat", b'{"model": "test-chat", "messages": [', ("JSON",)),
        ("/api/generate", b"", ("empty",)),
        ("/api/chat", {"messages": HI}, ("model",)),
        (
            "/api/chat",
            {"model": "test-chat", "messages": HI, "options": {"temprature": 0.1}},
            ("temprature", "did you mean 'temperature'"),
        ),
        ("/api/chat", {"model": "test-chat", "messages": HI, "options": "fast"}, ("options",)),
        (
            "/api/generate",
            {"model": "test-chat", "prompt": "x", "options": {"num_predict": "many"}},
            ("options.num_predict",),
        ),
        (
            "/api/generate",
            {"model": "test-chat", "prompt": "x", "options": {"mirostat": 2}},
            ("mirostat",),
        ),
        (
            "/api/chat",
            {"model": "test-chat", "messages": [{**HI[0], "images": ["iVBORw0KGgo="]}]},
            ('"test-chat" does not support images',),
        ),
        ("/api/generate", {"model": "test-chat", "prompt": "x", "images": ["iVBO"]}, ("images",)),
        ("/api/chat", {"model": "test-chat", "messages": HI, "think": True}, ("thinking",)),
        ("/api/generate", {"model": "test-chat", "prompt": "x", "suffix": "y"}, ("insert",)),
        (
            "/api/generate",
            {"model": "test-chat", "prompt": "x", "raw": True, "system": "s"},
            ("raw",),
        ),
        (
            "/api/generate",
            {"model": "test-chat", "prompt": "x", "template": "{{ range .Messages }}"},
            ("{{ range .Messages }}", "not supported"),
        ),
        (
            "/api/chat",
            {"model": "test-embed", "messages": HI},
            ('"test-embed" does not support chat',),
        ),
        ("/api/embed", {"model": "test-chat", "input": "x"}, ("does not support embeddings",)),
        ("/api/chat", {"model": "test-chat", "messages": HI, "keep_alive": "soon"}, ("soon",)),
        ("/api/show", {}, ("model is required",)),
        ("/api/copy", {"source": "test-chat"}, ("destination",)),
    ],
)
def test_bad_input_gets_an_ollama_400(
    server: CorralServer, path: str, body: Any, words: tuple[str, ...]
) -> None:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    assert_ollama_error(post(server, path, **kwargs), 400, *words)


def test_context_overflow_is_a_400_before_streaming(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        list(
            client.chat(
                model="test-chat", messages=[{"role": "user", "content": "w " * 3000}], stream=True
            )
        )
    assert err.value.status_code == 400 and "context length" in err.value.error


def test_the_python_client_sees_bad_options_as_response_errors(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="test-chat", messages=HI, options={"temprature": 0})
    assert err.value.status_code == 400 and "temprature" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="test-chat", messages=HI, think=True)
    assert err.value.status_code == 400
    assert err.value.error == '"test-chat" does not support thinking'


# --- pull ---------------------------------------------------------------------------


def test_pull_streams_progress_then_the_model_serves(own_client: ollama.Client) -> None:
    client = own_client
    updates = list(client.pull(f"hf.co/{REPO}", stream=True))
    statuses = [u.status for u in updates]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    size = models.model_file(models.CHAT).stat().st_size
    files = [u for u in updates if u.digest]
    assert files and all(u.digest and u.digest.startswith("sha256:") for u in files)
    assert files[-1].total == files[-1].completed == size
    assert files[-1].status == f"pulling {files[-1].digest[7:19]}"

    assert client.pull(f"hf.co/{REPO}").status == "success"  # already there: joins, succeeds
    assert f"hf.co/{REPO}:latest" in {m.model for m in client.list().models}
    reply = client.generate(model=f"hf.co/{REPO}", prompt="hi", options={"num_predict": 3})
    assert reply.eval_count == 3

    with pytest.raises(ollama.ResponseError) as err:
        list(client.pull("hf.co/org/missing", stream=True))
    assert "not found" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.pull("hf.co/org/missing")
    assert err.value.status_code == 500 and "not found" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.pull("llama3")  # an Ollama library name: no source Corral can pull from
    assert err.value.status_code == 400
