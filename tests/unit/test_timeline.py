"""The dashboard's last hour: buckets, percentiles, gaps, and the SVG it is drawn with."""

from __future__ import annotations

import pytest

from corral.api.ui.svg import Chart, fmt, svg
from corral.service.inference import Caller, RequestDone
from corral.service.timeline import SAMPLES, Timeline, percentile
from corral.service.worker_client import TokenUsage

T0 = 1_700_000_000.0  # a bucket boundary (divisible by 10)


def done(
    status: int = 200,
    *,
    queued: float = 0.01,
    total: float = 1.0,
    ttft: float | None = 0.1,
    completion: int = 10,
    complete: bool = True,
) -> RequestDone:
    return RequestDone(
        model="m",
        path="/v1/chat/completions",
        caller=Caller(),
        status=status,
        complete=complete,
        queued_ns=int(queued * 1e9),
        total_ns=int(total * 1e9),
        attempts=1,
        usage=TokenUsage(prompt_tokens=5, completion_tokens=completion),
        ttft_ns=None if ttft is None else int(ttft * 1e9),
    )


def test_requests_land_in_their_ten_second_bucket_with_rates_and_percentiles() -> None:
    timeline = Timeline()
    for i in range(10):
        timeline.observe(done(total=1.0 + i / 10, ttft=0.1 * (i + 1)), now=T0 + 1)
    timeline.observe(done(500, ttft=None), now=T0 + 12)
    timeline.observe(done(complete=False), now=T0 + 13)
    series = timeline.series(now=T0 + 25)
    assert series["t"][-3:] == [T0, T0 + 10, T0 + 20]
    assert series["requests"] == {
        "2xx": [0] * 357 + [10, 0, 0],
        "5xx": [0] * 357 + [0, 1, 0],
        "cut": [0] * 357 + [0, 1, 0],
    }
    assert series["tokens_per_s"][-3] == pytest.approx(10 * 10 / 10)  # 100 tokens in 10 s
    assert series["ttft_p50"][-3] == pytest.approx(0.55)
    assert series["ttft_p99"][-3] == pytest.approx(0.991)
    # ITL: (total - ttft) / (completion - 1) = 0.9 / 9 for each of the ten.
    assert series["itl_p50"][-3] == pytest.approx(0.1)
    assert series["ttft_p50"][-1] is None  # a quiet bucket is a gap, not a zero latency


def test_an_hour_is_kept_and_no_more() -> None:
    timeline = Timeline()
    for minute in range(90):
        timeline.observe(done(), now=T0 + 60 * minute)
    series = timeline.series(now=T0 + 60 * 89)
    assert len(series["t"]) == 360
    assert sum(series["requests"]["2xx"]) == 60  # the first 30 minutes have aged out


def test_latency_samples_per_bucket_are_bounded_but_representative() -> None:
    timeline = Timeline()
    for i in range(5 * SAMPLES):
        timeline.observe(done(queued=(i % 100) / 100), now=T0)
    series = timeline.series(now=T0)
    assert series["requests"]["2xx"][-1] == 5 * SAMPLES  # counted, all of them
    assert series["queue_p50"][-1] == pytest.approx(0.5, abs=0.08)


def test_memory_samples_are_columns_with_gaps() -> None:
    timeline = Timeline()
    timeline.sample_memory({"rss": 100.0, "budget": 1000.0}, now=T0)
    timeline.sample_memory({"rss": 150.0, "budget": 1000.0}, now=T0 + 20)
    memory = timeline.series(now=T0 + 20)["memory"]
    assert memory["rss"][-3:] == [100.0, None, 150.0]


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0


def test_svg_draws_lines_breaks_gaps_and_escapes_names() -> None:
    chart = Chart("TTFT <p50>", "s", [0, 10, 20, 30], {"a&b": [0.1, None, 0.2, 0.3]})
    html = str(svg(chart))
    assert 'data-chart="TTFT &lt;p50&gt;"' in html and "a&amp;b" in html
    assert html.count("<polyline") == 1 and html.count("<circle") == 1  # 0.1 alone: a dot
    assert 'data-points="3"' in html


def test_units_are_readable() -> None:
    assert fmt(0.0123, "s") == "12.3 ms"
    assert fmt(2.5, "s") == "2.5 s"
    assert fmt(3 * 1024**3, "B").startswith("3")
    assert fmt(42, "tok/s") == "42 tok/s"
