"""Turn a reference into a download plan: which files, from where, with which hashes.

Hub references go through ``huggingface_hub`` (repo info with LFS sha256 per file,
the exact commit, ``HF_ENDPOINT`` and ``HF_TOKEN``); the bytes themselves are then
fetched by ``download.py``, which needs what ``hf_hub_download`` does not offer: a
progress callback per byte, cancellation, and a resume file that outlives the process
and lands in Corral's content-addressed store. Resolution pins the commit, so every
file of one pull comes from one revision even if the repo changes meanwhile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from corral.errors import (
    AccessDenied,
    BadSource,
    InvalidRequest,
    ResolveError,
    SourceUnreachable,
)
from corral.registry.access import (
    ImportDirs,
    PullGuard,
    allowed_path,
    directory_files,
    failure_detail,
)
from corral.registry.refs import Reference

# Ollama's choice when an hf.co reference names no quant, then common fallbacks.
QUANT_PREFERENCE = ("Q4_K_M", "Q4_K_S", "Q4_0", "Q5_K_M", "Q8_0", "F16", "BF16")
_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")
# Weight formats a whole-repo pull skips when the repo also has safetensors.
_REDUNDANT_WEIGHTS = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".ot", ".gguf")
_NEVER = (".gitattributes", ".md", ".png", ".jpg", ".jpeg", ".gif")


@dataclass(frozen=True)
class RemoteFile:
    path: str  # inside the model
    url: str
    size: int | None
    sha256: str | None  # known before download: LFS oid, or the user's checksum
    git_sha1: str | None = None  # a small file's git blob id, verifiable after download
    etag: str | None = None
    local: Path | None = None  # a local source: copied, not downloaded

    @property
    def key(self) -> str:
        """Names the resume file: the hash when known, so two pulls share one."""
        import hashlib

        return self.sha256 or hashlib.sha256(self.url.encode()).hexdigest()


@dataclass(frozen=True)
class Plan:
    files: tuple[RemoteFile, ...]
    revision: str | None  # exact commit for Hub sources
    resolved: str  # the source, spelled for the lock file
    auth: bool = False  # send the Hub token with file requests

    @property
    def total(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)


def resolve(
    ref: Reference,
    *,
    revision: str | None = None,
    sha256: str | None = None,
    guard: PullGuard | None = None,
    import_dirs: ImportDirs = None,
) -> Plan:
    """The plan for ``ref``. A URL is only fetched where ``guard`` allows (default: no
    private addresses); a local path only inside ``import_dirs`` (None: anywhere)."""
    if ref.kind == "hub_gguf":
        return _hub_gguf(ref, revision)
    if ref.kind == "hub_repo":
        return _hub_repo(ref, revision)
    if ref.kind == "url":
        return _url(ref, sha256, guard or PullGuard())
    return _local(ref, sha256, import_dirs)


def hub_headers() -> dict[str, str]:
    from huggingface_hub.utils._headers import build_hf_headers

    headers: dict[str, str] = build_hf_headers(library_name="corral")
    return headers


def _repo_info(repo: str, revision: str | None) -> Any:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return HfApi(library_name="corral").model_info(repo, revision=revision, files_metadata=True)
    except GatedRepoError:
        raise AccessDenied(
            f"{repo} is gated: accept its terms on the Hub and set HF_TOKEN."
        ) from None
    except RepositoryNotFoundError:
        raise ResolveError(
            f"Repository {repo} not found on the Hub (or private: set HF_TOKEN)."
        ) from None
    except RevisionNotFoundError:
        raise ResolveError(f"Revision {revision!r} not found in {repo}.") from None
    except (HfHubHTTPError, OSError) as exc:
        raise SourceUnreachable(f"Could not reach the Hub for {repo}: {exc}") from None


def _remote(repo: str, commit: str, sibling: Any) -> RemoteFile:
    from huggingface_hub import hf_hub_url

    lfs = sibling.lfs
    return RemoteFile(
        path=sibling.rfilename,
        url=hf_hub_url(repo, sibling.rfilename, revision=commit),
        size=lfs.size if lfs else sibling.size,
        sha256=lfs.sha256 if lfs else None,
        git_sha1=None if lfs else sibling.blob_id,
    )


def _hub_gguf(ref: Reference, revision: str | None) -> Plan:
    repo = str(ref.repo)
    info = _repo_info(repo, revision)
    siblings = {s.rfilename: s for s in info.siblings or ()}
    ggufs = sorted(
        n for n in siblings if n.endswith(".gguf") and not Path(n).name.startswith("mmproj")
    )
    if not ggufs:
        raise ResolveError(f"{repo} has no GGUF files; for a whole repo, pull {repo} itself.")
    chosen = _choose_gguf(ggufs, ref.selector, repo)
    return Plan(
        files=tuple(_remote(repo, info.sha, siblings[n]) for n in chosen),
        revision=info.sha,
        resolved=ref.canonical,
        auth=True,
    )


def _choose_gguf(ggufs: list[str], selector: str | None, repo: str) -> list[str]:
    """The file (with its split siblings) a quant or file name picks."""
    if selector and selector in ggufs:
        return _with_splits(selector, ggufs)
    wanted = [selector] if selector else list(QUANT_PREFERENCE)
    for quant in wanted:
        pattern = re.compile(rf"(^|[-_./]){re.escape(quant)}([-_.]|$)", re.IGNORECASE)
        matches = [n for n in ggufs if pattern.search(Path(n).name)]
        if matches:
            return _with_splits(matches[0], ggufs)
    if selector is None:
        return _with_splits(ggufs[0], ggufs)
    available = sorted({_quant_label(n) for n in ggufs})
    raise ResolveError(
        f"No GGUF in {repo} matches {selector!r}; available: {', '.join(available)}."
    )


def _with_splits(name: str, ggufs: list[str]) -> list[str]:
    match = _SPLIT.match(name)
    if match is None:
        return [name]
    stem = match["stem"]
    return sorted(n for n in ggufs if (m := _SPLIT.match(n)) and m["stem"] == stem)


def _quant_label(name: str) -> str:
    base = _SPLIT.sub(r"\g<stem>", name).removesuffix(".gguf")
    for sep in ("-", "."):
        if sep in base:
            base = base.rsplit(sep, 1)[1]
    return base


def _hub_repo(ref: Reference, revision: str | None) -> Plan:
    repo = str(ref.repo)
    info = _repo_info(repo, revision)
    names = [s.rfilename for s in info.siblings or ()]
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    keep = [
        s
        for s in info.siblings or ()
        if not s.rfilename.endswith(_NEVER)
        and not (has_safetensors and s.rfilename.endswith(_REDUNDANT_WEIGHTS))
    ]
    if not any(s.rfilename.endswith((".safetensors", ".onnx")) for s in keep):
        hint = f" Pull hf.co/{repo} for a GGUF." if any(n.endswith(".gguf") for n in names) else ""
        raise BadSource(f"{repo} has no safetensors or ONNX weights.{hint}")
    return Plan(
        files=tuple(_remote(repo, info.sha, s) for s in keep),
        revision=info.sha,
        resolved=ref.canonical,
        auth=True,
    )


def _url(ref: Reference, sha256: str | None, guard: PullGuard) -> Plan:
    url = str(ref.url)
    try:
        with guard.client(follow_redirects=True, timeout=30.0) as client:
            response = client.head(url)
    except httpx.HTTPError as exc:
        raise SourceUnreachable(f"Could not reach {url}: {failure_detail(url, exc)}") from None
    if response.status_code >= 400:
        raise ResolveError(f"{url} answered {response.status_code}.")
    length = response.headers.get("content-length")
    name = Path(httpx.URL(url).path).name or "model.gguf"
    return Plan(
        files=(
            RemoteFile(
                path=name,
                url=url,
                size=int(length) if length and length.isdigit() else None,
                sha256=_checksum(sha256),
                etag=response.headers.get("etag"),
            ),
        ),
        revision=None,
        resolved=url,
    )


def _local(ref: Reference, sha256: str | None, import_dirs: ImportDirs) -> Plan:
    path = ref.path
    assert path is not None
    if import_dirs is not None:
        path = allowed_path(path, import_dirs, given=ref.text)
    if path.is_dir():
        entries = tuple(
            RemoteFile(rel, p.as_uri(), p.stat().st_size, None, local=p)
            for rel, p in directory_files(path, import_dirs).items()
        )
    elif path.is_file():
        size = path.stat().st_size
        entries = (RemoteFile(path.name, path.as_uri(), size, _checksum(sha256), local=path),)
    else:
        raise BadSource(f"No such file or directory: {path}")
    return Plan(files=entries, revision=None, resolved=str(path))


def _checksum(value: str | None) -> str | None:
    if value is None:
        return None
    digest = value.lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise InvalidRequest("A checksum is 64 hex digits of sha256.", param="sha256")
    return digest
