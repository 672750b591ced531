"""``corral bench`` and ``corral predict`` as a user runs them, against a real server
with real scikit-learn models (converted with skl2onnx)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")

from corral.registry.store import Registry
from tests.support.onnx_models import SklearnModel, sklearn_models
from tests.support.server import CorralServer


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SklearnModel]:
    return sklearn_models(tmp_path_factory.mktemp("onnx-models"))


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, models: dict[str, SklearnModel]
) -> Iterator[CorralServer]:
    home: Path = tmp_path_factory.mktemp("tensor-cli-home")
    registry = Registry(home)
    assert registry.import_path(models["iris"].path, "iris").name == "iris:1"
    assert registry.import_path(models["iris-names"].path, "iris").name == "iris:2"
    registry.import_path(models["digits"].path, "digits")
    registry.close()
    server = CorralServer(home, intra_op_threads=1).start()
    yield server
    server.stop()


def corral(
    srv: CorralServer, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        env={**srv.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_bench_measures_both_sides_and_keeps_the_run(srv: CorralServer) -> None:
    done = corral(
        srv,
        "bench",
        "iris",
        "--batch-sizes",
        "1,4",
        "--concurrency",
        "1,2",
        "--duration",
        "300ms",
        "--json",
    )
    assert done.returncode == 0, done.stderr + done.stdout
    run = json.loads(done.stdout)
    assert run["model"] == "iris:2" and run["id"] >= 1  # the version iris means, saved
    rows = run["results"]
    assert {(r["path"], r["batch_size"], r["concurrency"]) for r in rows} == {
        (path, b, c) for path in ("server", "in-process") for b in (1, 4) for c in (1, 2)
    }
    for r in rows:
        assert r["requests"] > 0 and r["errors"] == 0, r
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["rows_per_s"] == pytest.approx(r["requests_per_s"] * r["batch_size"], rel=0.01)
    assert run["machine"]["logical_cores"] >= 1 and run["machine"]["onnxruntime"]
    assert run["settings"] == {"batch_sizes": [1, 4], "concurrency": [1, 2], "duration_s": 0.3}
    history = httpx.get(f"{srv.url}/admin/models/iris:2/benchmarks").json()["benchmarks"]
    assert history[0]["id"] == run["id"] and history[0]["sha256"]
    listed = corral(srv, "bench", "iris", "--history")
    assert listed.returncode == 0 and "iris:2" in listed.stdout, listed.stdout


def test_bench_table_and_compare_two_versions(srv: CorralServer) -> None:
    table = corral(
        srv, "bench", "iris:1", "--batch-sizes", "2", "--concurrency", "1", "--duration", "200ms"
    )
    assert table.returncode == 0, table.stderr
    assert "in-process" in table.stdout and "server" in table.stdout
    assert "saved as run" in table.stdout
    compared = corral(
        srv,
        "bench",
        "iris",
        "--compare",
        "1",
        "2",
        "--batch-sizes",
        "2",
        "--concurrency",
        "1",
        "--duration",
        "200ms",
        "--json",
    )
    assert compared.returncode == 0, compared.stderr
    first, second = json.loads(compared.stdout)
    assert (first["model"], second["model"]) == ("iris:1", "iris:2")
    shown = corral(srv, "bench", "iris", "--compare", "1", "2")
    assert "SPEED" in shown.stdout and "iris:1" in shown.stdout, shown.stdout


def test_bench_refusals(srv: CorralServer) -> None:
    bad = corral(srv, "bench", "iris", "--duration", "fast")
    assert bad.returncode == 2 and "10s, 500ms or 1m" in bad.stderr
    missing = httpx.get(f"{srv.url}/admin/models/nope/benchmarks")
    assert missing.status_code == 404
    unknown = corral(srv, "bench", "iris", "--compare", "1", "9")
    assert unknown.returncode == 1 and "iris:9" in unknown.stderr


def test_predict_csv_with_bad_rows(
    srv: CorralServer, models: dict[str, SklearnModel], tmp_path: Path
) -> None:
    model = models["iris"]
    lines = ["sepal_l,sepal_w,petal_l,petal_w"]
    lines += [",".join(str(v) for v in row) for row in model.x]
    lines[4] = "5.1,3.5,oops,0.2"  # line 5 of the file
    lines[9] = "5.1,3.5"  # line 10
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    done = corral(
        srv, "predict", "iris:1", "in.csv", "-o", "out.jsonl", "--batch-size", "16", cwd=tmp_path
    )
    assert done.returncode == 3, done.stderr
    assert "2 rows failed" in done.stderr and "line 5" in done.stderr
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    kept = [i for i in range(150) if i not in (3, 8)]  # data row i is on line i + 2
    assert [r["line"] for r in written] == [i + 2 for i in kept]
    assert [r["output_label"] for r in written] == model.estimator.predict(model.x[kept]).tolist()
    probabilities = np.array([r["output_probability"] for r in written])
    np.testing.assert_allclose(
        probabilities, model.estimator.predict_proba(model.x[kept]), atol=1e-5
    )
    errors = (tmp_path / "out.errors.jsonl").read_text().splitlines()
    assert [json.loads(e)["line"] for e in errors] == [5, 10]


def test_predict_npy_and_jsonl_into_csv(
    srv: CorralServer, models: dict[str, SklearnModel], tmp_path: Path
) -> None:
    digits = models["digits"]
    np.save(tmp_path / "digits.npy", digits.x)
    done = corral(srv, "predict", "digits", "digits.npy", "-o", "digits.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"predicted {len(digits.x):,} rows" in done.stdout
    rows = (tmp_path / "digits.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[:2] == ["line", "output_label"] and header[2:4] == [
        "output_probability_0",
        "output_probability_1",
    ]
    labels = [int(r.split(",")[1]) for r in rows[1:]]
    assert labels == digits.estimator.predict(digits.x).tolist()
    iris = models["iris-names"]
    (tmp_path / "in.jsonl").write_text(
        "\n".join(json.dumps({"X": row.tolist()}) for row in iris.x[:20]) + "\n"
    )
    done = corral(srv, "predict", "iris:2", "in.jsonl", "-o", "names.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = [json.loads(line) for line in (tmp_path / "names.jsonl").read_text().splitlines()]
    assert [r["output_label"] for r in written] == iris.estimator.predict(iris.x[:20]).tolist()


def test_predict_refusals(srv: CorralServer, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("1,2,3,4\n")
    wrong = corral(srv, "predict", "iris", "in.txt", "-o", "out.jsonl", cwd=tmp_path)
    assert wrong.returncode == 1 and ".csv, .jsonl or .npy" in wrong.stderr
    (tmp_path / "in.csv").write_text("1,2,3,4\n")
    out = corral(srv, "predict", "iris", "in.csv", "-o", "out.xlsx", cwd=tmp_path)
    assert out.returncode == 1 and ".jsonl or .csv" in out.stderr
    missing = corral(srv, "predict", "nope", "in.csv", "-o", "out.jsonl", cwd=tmp_path)
    assert missing.returncode == 1 and "nope" in missing.stderr
