"""The real huggingface_hub client against FakeHub: the fake is only useful if the client buys it.

Nothing inside huggingface_hub is patched. In-process tests pass ``endpoint=`` per call (the
client reads ``HF_ENDPOINT`` once, at import); one test runs a fresh interpreter with only the
environment variables set, the way ``corral`` itself will run.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from huggingface_hub import (
    HfApi,
    close_session,
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.support.fake_hub import FakeHub

REPO = "acme/tiny-gguf"
TOKEN = "hf_fake_token_for_tests"
WEIGHTS = random.Random(7).randbytes(300 * 1024)  # several 64 KiB chunks
CONFIG = b'{"architectures": ["LlamaForCausalLM"]}'
README = b"# tiny\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own HF_TOKEN must not decide what these tests see."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as fake:
        try:
            yield fake
        finally:
            close_session()  # the client's pooled keep-alive sockets, before the server goes


@pytest.fixture
def weights_file(tmp_path: Path) -> Path:
    """Weights on disk: the fake must stream Path content rather than hold it."""
    path = tmp_path / "src" / "tiny.Q8_0.gguf"
    path.parent.mkdir()
    path.write_bytes(WEIGHTS)
    return path


@pytest.fixture
def repo(hub: FakeHub, weights_file: Path) -> str:
    """The commit sha of a small GGUF repo: one LFS file, two small ones, one nested."""
    return hub.add_repo(
        REPO,
        {
            "tiny.Q8_0.gguf": weights_file,
            "config.json": CONFIG,
            "README.md": README,
            "docs/notes.txt": b"nested\n",
        },
    )


def test_model_info_reports_files_sha256_sizes_and_commit(hub: FakeHub, repo: str) -> None:
    info = HfApi(endpoint=hub.url).model_info(REPO, files_metadata=True)
    assert info.id == REPO and info.sha == repo
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == {"tiny.Q8_0.gguf", "config.json", "README.md", "docs/notes.txt"}
    gguf = siblings["tiny.Q8_0.gguf"]
    assert gguf.size == len(WEIGHTS) and gguf.lfs is not None
    assert gguf.lfs.sha256 == sha256(WEIGHTS) and gguf.lfs.size == len(WEIGHTS)
    assert gguf.lfs.pointer_size > 0 and gguf.blob_id is not None and len(gguf.blob_id) == 40
    config = siblings["config.json"]
    assert config.lfs is None and config.size == len(CONFIG)
    git_sha1 = hashlib.sha1(b"blob %d\0" % len(CONFIG) + CONFIG).hexdigest()
    assert config.blob_id == git_sha1
    # Without files_metadata the hub lists names only, as the real one does.
    bare = HfApi(endpoint=hub.url).model_info(REPO)
    assert bare.siblings is not None and all(s.size is None for s in bare.siblings)


def test_revisions_by_branch_and_sha(hub: FakeHub, repo: str) -> None:
    api = HfApi(endpoint=hub.url)
    newer = hub.add_repo(REPO, {"tiny.Q8_0.gguf": b"v2 weights", "config.json": CONFIG})
    assert newer != repo and len(newer) == 40
    assert api.model_info(REPO).sha == newer
    assert api.model_info(REPO, revision="main").sha == newer
    old = api.model_info(REPO, revision=repo, files_metadata=True)
    assert old.sha == repo and len(old.siblings or []) == 4
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    assert sorted(api.list_repo_files(REPO)) == ["config.json", "tiny.Q8_0.gguf"]
    assert "docs/notes.txt" in api.list_repo_files(REPO, revision=repo)
    paths = api.get_paths_info(REPO, ["tiny.Q8_0.gguf", "missing"], revision=repo)
    assert [p.path for p in paths] == ["tiny.Q8_0.gguf"]


def test_download_gives_identical_bytes(hub: FakeHub, repo: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for name, data in [
        ("tiny.Q8_0.gguf", WEIGHTS),
        ("config.json", CONFIG),
        ("docs/notes.txt", b"nested\n"),
    ]:
        path = hf_hub_download(REPO, name, cache_dir=cache, endpoint=hub.url)
        assert Path(path).read_bytes() == data
        assert f"snapshots/{repo}/{name}" in path
    # The LFS file went HEAD /resolve -> 302 -> GET on the CDN; small files come straight back.
    methods_paths = [(m, p.split("?")[0]) for m, p, _ in hub.requests]
    assert ("HEAD", f"/{REPO}/resolve/main/tiny.Q8_0.gguf") in methods_paths
    assert ("GET", f"/_cdn/{sha256(WEIGHTS)}") in methods_paths
    assert ("GET", f"/{REPO}/resolve/main/config.json") in methods_paths
    assert hub.bytes_served(REPO, "tiny.Q8_0.gguf") == len(WEIGHTS)
    # A second call is answered from the cache after one HEAD: no body is fetched again.
    hf_hub_download(REPO, "tiny.Q8_0.gguf", cache_dir=cache, endpoint=hub.url)
    assert hub.bytes_served(REPO, "tiny.Q8_0.gguf") == len(WEIGHTS)


def test_snapshot_download_fetches_the_whole_repo(hub: FakeHub, repo: str, tmp_path: Path) -> None:
    folder = Path(snapshot_download(REPO, cache_dir=tmp_path / "cache", endpoint=hub.url))
    assert folder.name == repo
    assert (folder / "tiny.Q8_0.gguf").read_bytes() == WEIGHTS
    assert (folder / "docs" / "notes.txt").read_bytes() == b"nested\n"


def test_dropped_download_resumes_with_a_range(hub: FakeHub, tmp_path: Path) -> None:
    """huggingface_hub resumes within one call, from the last whole chunk it wrote.

    It reads bodies in DOWNLOAD_CHUNK_SIZE (10 MiB) pieces, so the bytes after the last full
    piece are fetched again; 2.4.0 no longer resumes leftover ``.incomplete`` files across calls.
    """
    piece = constants.DOWNLOAD_CHUNK_SIZE
    big = random.Random(3).randbytes(piece + 2 * 1024 * 1024)
    cut = piece + 1024 * 1024
    hub.add_repo(REPO, {"big.safetensors": big})
    hub.drop_after(REPO, "big.safetensors", cut)
    path = hf_hub_download(REPO, "big.safetensors", cache_dir=tmp_path, endpoint=hub.url)
    assert Path(path).read_bytes() == big
    ranges = [h.get("range") for m, p, h in hub.requests if p.startswith("/_cdn/") and m == "GET"]
    assert ranges == [None, f"bytes={piece}-"]
    # The first 10 MiB were not fetched twice: only the rest of the file came again.
    assert hub.bytes_served(REPO, "big.safetensors") == cut + (len(big) - piece)


def test_token_protected_hub(
    weights_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeHub(token=TOKEN) as hub:
        try:
            hub.add_repo(REPO, {"tiny.Q8_0.gguf": weights_file})
            api = HfApi(endpoint=hub.url)
            with pytest.raises(RepositoryNotFoundError):  # no token at all: the hub's 401
                api.model_info(REPO, token=False)
            with pytest.raises(HfHubHTTPError) as wrong:
                api.model_info(REPO, token="hf_wrong")
            assert wrong.value.response.status_code == 401
            with pytest.raises(HfHubHTTPError):  # no HF_TOKEN (a stored login would be wrong)
                hf_hub_download(REPO, "tiny.Q8_0.gguf", cache_dir=tmp_path, endpoint=hub.url)

            monkeypatch.setenv("HF_TOKEN", TOKEN)  # read per request, so this takes effect now
            assert api.model_info(REPO).id == REPO
            path = hf_hub_download(REPO, "tiny.Q8_0.gguf", cache_dir=tmp_path, endpoint=hub.url)
            assert Path(path).read_bytes() == WEIGHTS
            # The token went to the hub but not to the CDN, which checks its URL signature.
            sent = {p.split("?")[0]: h.get("authorization") for _, p, h in hub.requests}
            assert sent[f"/{REPO}/resolve/main/tiny.Q8_0.gguf"] == f"Bearer {TOKEN}"
            assert sent[f"/_cdn/{sha256(WEIGHTS)}"] is None
        finally:
            close_session()


def test_unknown_repo_and_file(hub: FakeHub, repo: str, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url).model_info("acme/nope", files_metadata=True)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/nope", "x.gguf", cache_dir=tmp_path, endpoint=hub.url)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "missing.gguf", cache_dir=tmp_path, endpoint=hub.url)


def test_corrupt_serves_bytes_off_the_advertised_sha256(
    hub: FakeHub, repo: str, tmp_path: Path
) -> None:
    hub.corrupt(REPO, "tiny.Q8_0.gguf")
    info = HfApi(endpoint=hub.url).model_info(REPO, files_metadata=True)
    advertised = next(s.lfs for s in info.siblings or [] if s.rfilename == "tiny.Q8_0.gguf")
    assert advertised is not None and advertised.sha256 == sha256(WEIGHTS)
    got = Path(hf_hub_download(REPO, "tiny.Q8_0.gguf", cache_dir=tmp_path, endpoint=hub.url))
    data = got.read_bytes()
    assert len(data) == len(WEIGHTS) and sha256(data) != advertised.sha256


def test_size_override_is_advertised(hub: FakeHub, repo: str) -> None:
    huge = 500 * 1024**3
    hub.set_size_override(REPO, "tiny.Q8_0.gguf", huge)
    info = HfApi(endpoint=hub.url).model_info(REPO, files_metadata=True)
    gguf = next(s for s in info.siblings or [] if s.rfilename == "tiny.Q8_0.gguf")
    assert gguf.size == huge and gguf.lfs is not None and gguf.lfs.size == huge
    url = hf_hub_url(REPO, "tiny.Q8_0.gguf", endpoint=hub.url)
    meta = get_hf_file_metadata(url, endpoint=hub.url)
    assert meta.size == huge and meta.commit_hash == repo and meta.etag == sha256(WEIGHTS)
    assert meta.location.startswith(hub.cdn_url)


def test_ranges_416_and_throttle(hub: FakeHub, repo: str) -> None:
    """The CDN's HTTP semantics directly, for code that fetches without huggingface_hub."""
    with httpx.Client() as client:
        head = client.head(f"{hub.url}/{REPO}/resolve/main/tiny.Q8_0.gguf")
        assert head.status_code == 302 and head.headers["x-repo-commit"] == repo
        cdn = head.headers["location"]
        part = client.get(cdn, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == WEIGHTS[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(WEIGHTS)}"
        etag = part.headers["etag"]
        same = client.get(cdn, headers={"Range": "bytes=10-19", "If-Range": etag})
        assert same.status_code == 206 and same.content == WEIGHTS[10:20]
        changed = client.get(cdn, headers={"Range": "bytes=10-19", "If-Range": '"other"'})
        assert changed.status_code == 200 and changed.content == WEIGHTS
        tail = client.get(cdn, headers={"Range": "bytes=-5"})
        assert tail.status_code == 206 and tail.content == WEIGHTS[-5:]
        beyond = client.get(cdn, headers={"Range": f"bytes={len(WEIGHTS)}-"})
        assert beyond.status_code == 416
        assert client.get(cdn + "tampered").status_code == 403
        small = client.get(
            f"{hub.url}/{REPO}/resolve/{repo}/config.json", headers={"Range": "bytes=2-"}
        )
        assert small.status_code == 206 and small.content == CONFIG[2:]
        assert hub.bytes_served(REPO, "tiny.Q8_0.gguf") == 10 + 10 + len(WEIGHTS) + 5

        hub.throttle(1024 * 1024)  # 300 KiB at 1 MiB/s: about 0.3 s
        started = time.monotonic()
        assert client.get(cdn).content == WEIGHTS
        assert time.monotonic() - started >= 0.25
        hub.throttle(None)


def test_hf_endpoint_and_hf_token_from_the_environment(weights_file: Path, tmp_path: Path) -> None:
    """A fresh interpreter with only HF_ENDPOINT/HF_TOKEN set, as corral's processes run."""
    script = (
        "import sys\n"
        "from huggingface_hub import HfApi, constants, hf_hub_download\n"
        "assert constants.ENDPOINT == sys.argv[1], constants.ENDPOINT\n"
        "print(HfApi().model_info(sys.argv[2], files_metadata=True).sha)\n"
        "print(hf_hub_download(sys.argv[2], 'tiny.Q8_0.gguf'))\n"
    )
    with FakeHub(token=TOKEN) as hub:
        sha = hub.add_repo(REPO, {"tiny.Q8_0.gguf": weights_file})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf-home"))
        done = subprocess.run(
            [sys.executable, "-c", script, hub.url, REPO],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    printed_sha, path = done.stdout.split()
    assert printed_sha == sha
    assert Path(path).read_bytes() == WEIGHTS
    assert str(tmp_path / "hf-home") in path
