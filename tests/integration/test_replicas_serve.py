"""A model with ``replicas: 2`` on a real gateway: a conversation keeps its replica,
load spreads over both, and ``ps`` and the metrics show them.

The fake engine's workers (real processes) say which one answered
(``system_fingerprint`` is the worker's pid).
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.support.fake_engine import install_fake_models
from tests.support.server import CorralServer


def replicas(srv: CorralServer) -> list[dict[str, Any]]:
    models = httpx.get(srv.url + "/admin/ps").json()["models"]
    return [m for m in models if m["model"] == "r:latest"]


def test_a_conversation_keeps_its_replica_and_load_spreads(tmp_path: Path) -> None:
    home = tmp_path / "home"
    script = {"replicas": 2, "slots": 2, "tokens": 20, "token_delay": 0.02}
    install_fake_models(home, {"r": script}).close()
    srv = CorralServer(home, fake_engine=True).start()
    try:
        with openai.OpenAI(base_url=srv.openai_url, api_key="x", max_retries=0) as client:
            history = [{"role": "system", "content": "be brief"}]
            answered = set()
            for turn in range(4):
                history.append({"role": "user", "content": f"question {turn}"})
                reply = client.chat.completions.create(
                    model="r",
                    messages=history,
                    max_tokens=3,  # type: ignore[arg-type]
                )
                answered.add(reply.system_fingerprint)
                history.append({"role": "assistant", "content": reply.choices[0].message.content})
            assert len(answered) == 1  # every turn on one replica: its KV cache

            def ask(i: int) -> str | None:
                messages = [{"role": "user", "content": f"conversation {i}"}]
                reply = client.chat.completions.create(model="r", messages=messages)  # type: ignore[arg-type]
                return reply.system_fingerprint

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                fingerprints = list(pool.map(ask, range(24)))
            assert len(set(fingerprints)) == 2  # more than one replica's slots: both run
        rows = replicas(srv)
        assert sorted(m["replica"] for m in rows) == [0, 1]
        assert all(m["state"] == "ready" for m in rows)
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'corral_model_state{model="r:latest",state="ready"} 2.0' in metrics
        assert 'corral_slots_total{model="r:latest"} 4.0' in metrics
        unloaded = httpx.post(srv.url + "/admin/models/r/unload", timeout=30)
        assert unloaded.status_code == 200, unloaded.text
        rows = replicas(srv)
        assert all(m["state"] == "stopped" for m in rows) or not rows
    finally:
        srv.stop()
