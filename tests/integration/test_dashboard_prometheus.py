"""The dashboard's charts read from a real Prometheus that scrapes the gateway
(``CORRAL_PROMETHEUS_URL``), and fall back to the gateway's own ring buffer, saying
so, when it does not answer. Debian's ``prometheus`` (``.ci/run`` installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from corral.scheduler.launch import free_port
from tests.support.chat import stream_chat
from tests.support.fake_engine import install_fake_models
from tests.support.server import CorralServer

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus: apt-get install -y prometheus (see .ci/run)"
)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[CorralServer, subprocess.Popen[bytes], str]]:
    prom_port = free_port()
    prom_url = f"http://127.0.0.1:{prom_port}"
    install_fake_models(tmp_path / "home", {"m": {"tokens": 6, "token_delay": 0.01}}).close()
    srv = CorralServer(tmp_path / "home", fake_engine=True, prometheus_url=prom_url).start()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: corral\n    static_configs: [{{targets: ['127.0.0.1:{srv.port}']}}]\n"
    )
    assert PROMETHEUS is not None
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    log.close()  # the child has its own copy
    try:
        yield srv, prom, prom_url
    finally:
        prom.terminate()
        prom.wait(20)
        srv.stop()


def points(html: str, title: str) -> int:
    found = re.search(rf'data-chart="{re.escape(title)}".*?data-points="(\d+)"', html, re.S)
    assert found, title
    return int(found.group(1))


def test_charts_come_from_prometheus_and_fall_back_when_it_is_gone(
    stack: tuple[CorralServer, subprocess.Popen[bytes], str],
) -> None:
    srv, prom, prom_url = stack
    page = ""
    with openai.OpenAI(base_url=srv.openai_url, api_key="x", max_retries=0) as client:
        deadline = time.monotonic() + 60
        # Traffic until Prometheus has scraped enough of it for rates and quantiles.
        while not ("Time to first" in page and points(page, "Time to first token")):
            assert time.monotonic() < deadline, "the charts never showed Prometheus's data"
            stream_chat(client, "m", 6)
            time.sleep(0.3)
            page = httpx.get(srv.url + "/ui/charts?window=5m", timeout=30).text
    assert 'data-prometheus="yes"' in page and f"Prometheus at {prom_url}" in page
    assert points(page, "Tokens per second") > 0
    assert int(re.search(r'data-requests="(\d+)"', page).group(1)) > 0  # type: ignore[union-attr]

    prom.terminate()
    prom.wait(20)
    page = httpx.get(srv.url + "/ui/charts?window=5m", timeout=30).text
    assert 'data-prometheus="no"' in page and "Prometheus did not answer" in page
    assert points(page, "Time to first token") > 0  # the ring buffer has the same traffic
