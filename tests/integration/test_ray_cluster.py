"""Workers placed on a real local Ray cluster (``CORRAL_RAY_ADDRESS``).

A head with no CPUs (no worker may land there) and nodes started by ``ray start``,
each with its own custom resource and memory. A real ``corral serve`` joins the
cluster; each model's worker is a Ray actor asking for what its engine needs, and
the gateway talks to the worker over HTTP at the node's address. The worker here is
the fake engine's (a real process: this tests placement, not inference).
"""

from __future__ import annotations

import concurrent.futures
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from tests.support.batches import chat_line, completed_count, output_of, submit, wait_batch
from tests.support.fake_engine import install_fake_models
from tests.support.ray_cluster import LocalRay, missing
from tests.support.server import CorralServer, wait_until

pytestmark = [
    pytest.mark.skipif(missing() is not None, reason=missing() or ""),
    # A cluster takes ~15 s to start, and one test at a time runs one (the lock).
    pytest.mark.timeout(600),
]
MiB = 1 << 20
NODE_MEMORY = 1024 * MiB


@pytest.fixture
def cluster() -> Iterator[LocalRay]:
    """A cluster of its own per test (a test may lose a node): a head without CPUs
    and nodes b and c, 2 CPUs and 1 GiB of memory each."""
    with LocalRay().running() as ray:
        ray.add_nodes("node_b", "node_c", memory=NODE_MEMORY)
        yield ray


def serve(home: Path, cluster: LocalRay, **settings: Any) -> CorralServer:
    srv = CorralServer(
        home, fake_engine=True, ray_address=cluster.address, max_loaded_models=0, **settings
    )
    return srv.start()


def ps(srv: CorralServer) -> dict[str, dict[str, Any]]:
    models = httpx.get(srv.url + "/admin/ps", timeout=10).json()["models"]
    return {m["model"]: m for m in models}


def chat(client: openai.OpenAI, model: str, tokens: int = 2) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=tokens
    )


def fake_workers(model: str) -> list[psutil.Process]:
    """The fake engine's worker processes serving ``model``, on whatever node."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "tests.support.fake_worker" in cmdline and model in cmdline:
            found.append(process)
    return found


def test_workers_go_where_their_resources_are(cluster: LocalRay, tmp_path: Path) -> None:
    cluster.add_node("node_g", cpus=1, gpus=1)  # Ray counts GPUs it is told of
    home = tmp_path / "home"
    install_fake_models(
        home,
        {
            "on-b": {"resources": {"node_b": 1}},
            "on-c": {"resources": {"node_c": 1}},
            "nowhere": {"resources": {"gpu_x": 1}},
            "on-gpu": {"vram": 512 * MiB},  # needs GPU memory: asks Ray for a GPU
        },
    ).close()
    srv = serve(home, cluster)
    try:
        with openai.OpenAI(base_url=srv.openai_url, api_key="x", max_retries=0) as client:
            assert chat(client, "on-b").choices[0].message.content
            assert chat(client, "on-c").choices[0].message.content
            assert chat(client, "on-gpu").choices[0].message.content
            with pytest.raises(openai.APIStatusError) as refused:
                chat(client, "nowhere")
        assert refused.value.status_code == 507
        assert "no Ray node has CPU=1, gpu_x=1" in refused.value.message
        running = ps(srv)
        assert running["on-b:latest"]["node"] == cluster.node_id("node_b")
        assert running["on-c:latest"]["node"] == cluster.node_id("node_c")
        assert running["on-gpu:latest"]["node"] == cluster.node_id("node_g")
        # Ray gave the worker's actor that GPU; the worker inherits it.
        (gpu_worker,) = fake_workers("on-gpu:latest")
        assert gpu_worker.environ().get("CUDA_VISIBLE_DEVICES") == "0"
        # The gateway talks to the worker at its node's address, not over loopback.
        assert running["on-b:latest"]["url"].startswith("http://")
        assert running["on-b:latest"]["pid"] is None  # another machine's process
        # The worker's output reached the shared home's log from the node.
        assert wait_until(lambda: (home / "logs" / "on-b_latest.log").exists(), 5) or any(
            p.name.startswith("on-b") for p in (home / "logs").iterdir()
        )
        # At the priority a local worker has, not the nice 15 of Ray's own workers.
        assert [p.nice() for p in fake_workers("on-b:latest")] == [psutil.Process().nice()]
    finally:
        srv.stop()
    # The gateway's actors end with it, and their workers with them: no orphans.
    assert wait_until(lambda: not fake_workers("on-b:latest"), 20)
    assert not fake_workers("on-c:latest")


def test_memory_is_each_nodes_own(cluster: LocalRay, tmp_path: Path) -> None:
    """Two 700 MiB workers cannot share a 1 GiB node: Ray puts them on two nodes.
    A third does not fit the cluster's 2 GiB: the least recently used one goes."""
    home = tmp_path / "home"
    big = {"memory": 700 * MiB}
    install_fake_models(home, {"m1": big, "m2": big, "m3": big}).close()
    srv = serve(home, cluster)
    try:
        with openai.OpenAI(base_url=srv.openai_url, api_key="x", max_retries=0) as client:
            chat(client, "m1")
            chat(client, "m2")
            first = ps(srv)
            assert first["m1:latest"]["node"] != first["m2:latest"]["node"]
            assert {first["m1:latest"]["node"], first["m2:latest"]["node"]} == {
                cluster.node_id("node_b"),
                cluster.node_id("node_c"),
            }
            chat(client, "m3")
        after = ps(srv)
        assert after["m3:latest"]["state"] == "ready"
        assert after["m3:latest"]["node"] == first["m1:latest"]["node"]
        assert "m1:latest" not in after or after["m1:latest"]["state"] == "stopped"
        assert after["m2:latest"]["state"] == "ready"
        # A gateway killed outright: Ray ends its driver's actors, and the workers go.
        assert fake_workers("m2:latest") and fake_workers("m3:latest")
        srv.stop(signal.SIGKILL)
        assert wait_until(lambda: not fake_workers("m2:latest"), 60)
        assert not fake_workers("m3:latest")
    finally:
        srv.stop()


def test_a_lost_node_fails_what_it_had_and_the_rest_moves(
    cluster: LocalRay, tmp_path: Path
) -> None:
    """Node D holds two models' workers; node E can take them. D dies with a request
    accepted and unfinished on one (502) and three queued behind it (served on E),
    and a batch running on the other (every line's result exactly once: the lines
    interrupted run again)."""
    cluster.add_node("node_d", resources={"pool": 2})
    home = tmp_path / "home"
    pool = {"resources": {"pool": 1}, "token_delay": 0.05, "tokens": 10_000}  # max_tokens rules
    install_fake_models(home, {"p": {"slots": 1, **pool}, "q": {"slots": 4, **pool}}).close()
    srv = serve(home, cluster)
    try:
        with openai.OpenAI(base_url=srv.openai_url, api_key="x", max_retries=0) as client:
            chat(client, "p", tokens=1)
            chat(client, "q", tokens=1)
            where = ps(srv)
            d = cluster.node_id("node_d")  # only D has "pool" so far
            assert where["p:latest"]["node"] == where["q:latest"]["node"] == d
            cluster.add_node("node_e", resources={"pool": 2})
            batch = submit(client, [chat_line(i, "q", max_tokens=4) for i in range(60)])
            assert wait_until(lambda: completed_count(client, batch.id) >= 8, 60)
            with concurrent.futures.ThreadPoolExecutor(4) as threads:
                accepted = threads.submit(chat, client, "p", 600)  # 30 s of tokens, 1 slot
                assert wait_until(lambda: ps(srv)["p:latest"]["slots"]["busy"] == 1, 10)
                queued = [threads.submit(chat, client, "p", 2) for _ in range(3)]
                assert wait_until(lambda: ps(srv)["p:latest"]["queued"] == 3, 10)
                cluster.lose("node_d")
                with pytest.raises(openai.APIStatusError) as lost:
                    accepted.result(60)
                answers = [q.result(60) for q in queued]
            assert lost.value.status_code == 502
            assert "Ray node" in lost.value.message
            assert all(a.choices[0].message.content for a in answers)
            e = cluster.node_id("node_e")
            assert ps(srv)["p:latest"]["node"] == e
            ended = wait_batch(client, batch.id, timeout=120)
            assert ended.status == "completed", ended
            assert ps(srv)["q:latest"]["node"] == e
            records = output_of(client, ended.output_file_id)
            ids = Counter(r["custom_id"] for r in records)
            assert ids == Counter({f"req-{i}": 1 for i in range(60)})
            assert all(r["response"]["status_code"] == 200 for r in records)
            assert ended.error_file_id is None
    finally:
        srv.stop()
