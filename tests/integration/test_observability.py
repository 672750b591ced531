"""/metrics, the Grafana dashboard, the request log and /ready, against a real server.

The demo model (real llama.cpp) so that the engine's own figures come through the
gateway's scrape, as they would in production.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import CorralServer, wait_until

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "corral.json"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    home: Path = tmp_path_factory.mktemp("observe-home")
    server = CorralServer(home, demo_model=1, preload="demo").start(timeout=120)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def traffic(srv: CorralServer) -> None:
    """A stream with usage, a whole answer, a refusal: what the figures are made of."""
    assert wait_until(lambda: httpx.get(srv.url + "/ready").status_code == 200, 60)
    with openai.OpenAI(base_url=srv.openai_url, api_key="none", max_retries=0) as c:
        stream = c.chat.completions.create(
            model="demo",
            messages=HI,  # type: ignore[arg-type]
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
            user="alice@example.com",
            metadata={"job": "nightly"},
        )
        assert list(stream)
        c.chat.completions.create(model="demo", messages=HI, max_tokens=3)  # type: ignore[arg-type]
        # A stream that asks for no usage: the gateway still counts its tokens, and the
        # client's bytes carry nothing it did not ask for.
        body = {"model": "demo", "messages": HI, "max_tokens": 4, "stream": True}
        raw = httpx.post(srv.openai_url + "/chat/completions", json=body, timeout=60).content
        assert raw.endswith(b"data: [DONE]\n\n") and b"usage" not in raw
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="nope", messages=HI)  # type: ignore[arg-type]


def scrape(srv: CorralServer) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    reply = httpx.get(srv.url + "/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    families: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(reply.text):
        families[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return families


def value(
    families: dict[str, list[tuple[str, dict[str, str], float]]], sample: str, **labels: str
) -> float:
    for samples in families.values():
        for name, have, number in samples:
            if name == sample and all(have.get(k) == v for k, v in labels.items()):
                return number
    raise AssertionError(f"no sample {sample} {labels}")


def test_a_scrape_has_requests_tokens_latencies_slots_loads_and_engine_figures(
    srv: CorralServer, traffic: None
) -> None:
    m = scrape(srv)
    model = {"model": "demo:latest"}
    chat = {**model, "endpoint": "/v1/chat/completions", "status": "200"}
    assert value(m, "corral_inference_requests_total", **chat) == 3
    assert value(m, "corral_tokens_total", **model, kind="completion") == 6 + 3 + 4
    assert value(m, "corral_tokens_total", **model, kind="prompt") > 0
    assert value(m, "corral_time_to_first_token_seconds_count", **model) == 2  # the streams
    assert value(m, "corral_inter_token_latency_seconds_count", **model) == 2
    assert value(m, "corral_queue_wait_seconds_count", **model) == 3
    assert value(m, "corral_slots_total", **model) >= 1
    assert value(m, "corral_model_loads_total", **model) == 1
    assert value(m, "corral_model_load_seconds_total", **model) > 0
    assert value(m, "corral_worker_rss_bytes", **model) > 10 << 20
    assert value(m, "corral_engine_decode_steps", **model) > 0  # from the worker
    refused = {"method": "POST", "route": "/v1/chat/completions", "status": "404"}
    assert value(m, "corral_http_requests_total", **refused) == 1
    assert value(m, "corral_model_state", **model, state="ready") == 1


def test_every_metric_the_grafana_dashboard_uses_is_in_a_real_scrape(
    srv: CorralServer, traffic: None
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(r"corral_[a-z0-9_]+", " ".join(exprs)))
    assert len(used) >= 20
    m = scrape(srv)
    known = set(m) | {name for samples in m.values() for name, _, _ in samples}
    # A counter family nothing has counted yet (no 429 so far) has no samples, only
    # its name: the dashboard's ``_total`` of it is still a real series once it counts.
    missing = sorted(
        name for name in used if name not in known and re.sub(r"_total$", "", name) not in m
    )
    assert not missing, missing


def test_the_request_log_has_who_what_and_how_long_but_no_prompt(
    srv: CorralServer, traffic: None
) -> None:
    rows = httpx.get(srv.url + "/admin/logs", params={"model": "demo:latest"}).json()["data"]
    stream = next(r for r in rows if r["user"] == "alice@example.com")
    assert stream["route"] == "/v1/chat/completions" and stream["status"] == 200
    assert stream["metadata"] == {"job": "nightly"}
    assert stream["completion_tokens"] == 6 and stream["prompt_tokens"] > 0
    assert stream["ttft_ms"] is not None and stream["duration_ms"] >= stream["ttft_ms"]
    assert stream["client"] == "127.0.0.1" and stream["key_id"] is None
    assert "prompt" not in stream  # log_prompts is off
    errors = httpx.get(srv.url + "/admin/logs", params={"status": "4xx"}).json()["data"]
    assert [r["status"] for r in errors] == [404]
    recent = httpx.get(srv.url + "/admin/logs", params={"since": "1h", "limit": 2}).json()["data"]
    assert len(recent) == 2 and recent[0]["id"] < recent[1]["id"]
    probes = httpx.get(srv.url + "/admin/logs", params={"limit": 1000}).json()["data"]
    assert not [r for r in probes if r["route"] in ("/health", "/metrics", "/ready")]
    bad = httpx.get(srv.url + "/admin/logs", params={"status": "3xx"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"


def test_corral_logs_prints_one_line_per_request(srv: CorralServer, traffic: None) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "corral", "logs", "--status", "2xx", "--model", "demo:latest"],
        env={**os.environ, "CORRAL_PORT": str(srv.port), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3
    assert " 200 POST /v1/chat/completions demo:latest " in lines[0]
    assert "user=alice@example.com" in lines[0] and "ttft" in lines[0]


def test_ready_knows_preloads_and_single_models(srv: CorralServer, traffic: None) -> None:
    ready = httpx.get(srv.url + "/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"registry": "ok", "demo:latest": "ready"}
    assert httpx.get(srv.url + "/ready", params={"model": "demo"}).status_code == 200
    missing = httpx.get(srv.url + "/ready", params={"model": "nope"})
    assert missing.status_code == 503 and "nope" in missing.json()["checks"]["model"]
