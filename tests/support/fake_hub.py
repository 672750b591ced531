"""A local stand-in for the Hugging Face Hub HTTP API, for tests only.

Model hubs are unreachable from the test machines, so this fake stands at the network boundary:
the real ``huggingface_hub`` client talks to it over loopback HTTP once ``HF_ENDPOINT`` (or an
``endpoint=`` argument) points at :attr:`FakeHub.url`. It speaks the parts of the API the client
uses to find and fetch model files, with the headers the client reads:

- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (``?blobs=true`` adds
  file sizes, blob ids and LFS sha256s to ``siblings``),
- ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``?recursive=true``) and
  ``POST /api/models/{repo}/paths-info/{rev}``, which ``list_repo_files`` and
  ``snapshot_download`` use,
- ``HEAD``/``GET /{repo}/resolve/{rev}/{filename}``: small files are served directly; LFS files
  answer 302 to a signed URL on a second, CDN-like listener (another port: the client follows
  same-origin redirects itself during its HEAD and drops the ``Authorization`` header for other
  origins, exactly as it does for the real CDN).

Errors carry the hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``), which is what the client turns into its typed exceptions. Xet is never
advertised, so the client downloads over plain HTTP with ``Range`` resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

CHUNK = 64 * 1024
LFS_SUFFIXES = (".gguf", ".safetensors", ".onnx", ".bin")
CDN_PREFIX = "/_cdn/"
_FLIP = bytes(255 - i for i in range(256))  # corrupt() xors every byte: same length, other sha256


class _Unsatisfiable(Exception):
    """A Range header no byte of the file can satisfy (answered 416)."""


@dataclass(frozen=True)
class _Blob:
    """File content, kept in memory or on disk (streamed in chunks, never read whole)."""

    source: bytes | Path
    size: int
    sha256: str
    git_sha1: str

    @classmethod
    def of(cls, source: bytes | Path) -> _Blob:
        """Hash the content the way git and git-lfs do, in one streaming pass."""
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1(b"blob %d\0" % size)
        for chunk in _Blob(source, size, "", "").chunks(0, size):
            sha256.update(chunk)
            sha1.update(chunk)
        return cls(source, size, sha256.hexdigest(), sha1.hexdigest())

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` in pieces of at most CHUNK."""
        if isinstance(self.source, bytes):
            for pos in range(start, end, CHUNK):
                yield self.source[pos : min(pos + CHUNK, end)]
            return
        with self.source.open("rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise OSError(f"{self.source} shrank while being served")
                left -= len(chunk)
                yield chunk


@dataclass(frozen=True)
class _File:
    """One path in one commit: a regular git blob or an LFS pointer to the content."""

    path: str
    blob: _Blob
    lfs: bool

    @property
    def pointer(self) -> bytes:
        """The git-lfs pointer file git stores in place of the content."""
        return (
            f"version https://git-lfs.github.com/spec/v1\n"
            f"oid sha256:{self.blob.sha256}\nsize {self.blob.size}\n"
        ).encode()

    @property
    def blob_id(self) -> str:
        """The git object id: of the pointer for LFS files, of the content otherwise."""
        if not self.lfs:
            return self.blob.git_sha1
        pointer = self.pointer
        return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()


@dataclass(frozen=True)
class _Commit:
    sha: str
    files: dict[str, _File]
    date: str


@dataclass
class _Repo:
    repo_id: str
    created: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> _Commit | None:
        """A branch name or a full commit sha, as the hub accepts them."""
        sha = self.branches.get(revision, revision)
        return self.commits.get(sha)


class FakeHub:
    """A local HTTP server speaking the parts of the Hub API huggingface_hub uses.

    ``requests`` logs every request to the hub and to its CDN as (method, path with query,
    headers with lower-cased names). With ``token`` set, every hub request needs
    ``Authorization: Bearer <token>``; CDN URLs carry a signature instead, since clients drop
    the header when a redirect leaves the hub's origin.
    """

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, _Blob] = {}
        self._corrupt: set[tuple[str, str]] = set()
        self._drops: dict[tuple[str, str], int] = {}
        self._sizes: dict[tuple[str, str], int] = {}
        self._served: dict[tuple[str, str], int] = {}
        self._rate: int | None = None
        self._secret = secrets.token_bytes(16)
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        """Listen on two free loopback ports: the hub itself and its CDN."""
        if self._servers:
            return self
        for role in ("hub", "cdn"):
            server = _Server(self, role)
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                daemon=True,
                name=f"fake-hub-{role}",
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop listening, cut open keep-alive connections and join every thread."""
        servers, threads = self._servers, self._threads
        self._servers, self._threads = [], []
        for server in servers:
            server.shutdown()
        for server in servers:
            server.close_connections()
            server.server_close()
        for thread in threads:
            thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The value for ``HF_ENDPOINT``."""
        return self._base_url("hub")

    @property
    def cdn_url(self) -> str:
        """Where LFS downloads are redirected to (a different origin, like the real CDN)."""
        return self._base_url("cdn")

    def _base_url(self, role: str) -> str:
        for server in self._servers:
            if server.role == role:
                return f"http://127.0.0.1:{server.server_address[1]}"
        raise RuntimeError("FakeHub is not started")

    # -- content -----------------------------------------------------------------------------------

    def add_repo(
        self, repo_id: str, files: dict[str, bytes | Path], *, lfs: set[str] | None = None
    ) -> str:
        """Commit ``files`` (the whole tree at that commit) to ``main``; return the commit sha.

        Names ending in .gguf/.safetensors/.onnx/.bin, or listed in ``lfs``, are LFS files.
        Calling again for the same repo adds a new commit, which becomes ``main``; the old one
        stays reachable by its sha.
        """
        org, _, name = repo_id.partition("/")
        if not org or not name or "/" in name:
            raise ValueError(f"repo ids are 'org/name', got {repo_id!r}")
        forced = lfs or set()
        built = {}
        for path, source in files.items():
            blob = _Blob.of(Path(source) if isinstance(source, Path) else bytes(source))
            built[path] = _File(path, blob, path.endswith(LFS_SUFFIXES) or path in forced)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo(repo_id, created=now))
            parent = repo.branches.get("main", "")
            listing = "".join(f"{p}\0{f.blob_id}\n" for p, f in sorted(built.items()))
            seed = f"{repo_id}\n{parent}\n{len(repo.commits)}\n{listing}".encode()
            sha = hashlib.sha1(seed).hexdigest()
            repo.commits[sha] = _Commit(sha, built, now)
            repo.branches["main"] = sha
            for file in built.values():
                self._blobs[file.blob.sha256] = file.blob
        return sha

    def corrupt(self, repo_id: str, filename: str) -> None:
        """From now on serve other bytes (same length) than the advertised sha256."""
        key = self._existing(repo_id, filename)
        with self._lock:
            self._corrupt.add(key)

    def throttle(self, bytes_per_second: int | None) -> None:
        """Slow file bodies down (a pause after each 64 KiB chunk); None is full speed."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive or None")
        self._rate = bytes_per_second

    def drop_after(self, repo_id: str, filename: str, nbytes: int) -> None:
        """Cut the connection after ``nbytes`` body bytes of the next GET of this file, once.

        The socket is shut down cleanly mid-body (FIN), so the client sees a short body: the
        way a dropped proxy or load-balancer connection looks, and what huggingface_hub resumes.
        """
        key = self._existing(repo_id, filename)
        with self._lock:
            self._drops[key] = nbytes

    def set_size_override(self, repo_id: str, filename: str, size: int) -> None:
        """Advertise ``size`` in repo info, tree listings and HEAD; bodies stay the real bytes."""
        key = self._existing(repo_id, filename)
        with self._lock:
            self._sizes[key] = size

    def bytes_served(self, repo_id: str, filename: str) -> int:
        """Content bytes sent for this file so far, over all GETs and ranges."""
        with self._lock:
            return self._served.get((repo_id, filename), 0)

    def _existing(self, repo_id: str, filename: str) -> tuple[str, str]:
        """Catch typos in test setup instead of silently arming nothing."""
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None or not any(filename in c.files for c in repo.commits.values()):
                raise KeyError(f"{repo_id}/{filename} is not on the fake hub")
        return (repo_id, filename)

    # -- used by the request handler ---------------------------------------------------------------

    def _log(self, method: str, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((method, path, headers))

    def _repo(self, repo_id: str) -> _Repo | None:
        with self._lock:
            return self._repos.get(repo_id)

    def _blob(self, sha256: str) -> _Blob | None:
        with self._lock:
            return self._blobs.get(sha256)

    def _size(self, repo_id: str, file: _File) -> int:
        with self._lock:
            return self._sizes.get((repo_id, file.path), file.blob.size)

    def _faults(self, key: tuple[str, str]) -> tuple[bool, int | None]:
        """Whether to corrupt this body, and where to cut it (consumed: a drop happens once)."""
        with self._lock:
            return key in self._corrupt, self._drops.pop(key, None)

    def _count(self, key: tuple[str, str], n: int) -> None:
        with self._lock:
            self._served[key] = self._served.get(key, 0) + n

    def _sign(self, sha256: str, repo_id: str, filename: str) -> str:
        """CDN URLs are signed, as the real ones are: no token travels to the CDN."""
        message = f"{sha256}\n{repo_id}\n{filename}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def _cdn_location(self, repo_id: str, file: _File) -> str:
        sig = self._sign(file.blob.sha256, repo_id, file.path)
        query = urlencode({"repo": repo_id, "file": file.path, "sig": sig})
        return f"{self.cdn_url}{CDN_PREFIX}{file.blob.sha256}?{query}"

    def _entry(self, repo_id: str, file: _File) -> dict[str, Any]:
        """A tree / paths-info entry, as the hub lists a file."""
        size = self._size(repo_id, file)
        entry: dict[str, Any] = {"type": "file", "oid": file.blob_id, "size": size}
        entry["path"] = file.path
        if file.lfs:
            entry["lfs"] = {"oid": file.blob.sha256, "size": size, "pointerSize": len(file.pointer)}
        return entry

    def _info(self, repo: _Repo, commit: _Commit, blobs: bool) -> dict[str, Any]:
        """The model-info document; ``blobs`` adds sizes, blob ids and LFS details."""
        siblings: list[dict[str, Any]] = []
        total = 0
        for path in sorted(commit.files):
            file = commit.files[path]
            size = self._size(repo.repo_id, file)
            total += size
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(blobId=file.blob_id, size=size)
                if file.lfs:
                    sibling["lfs"] = {
                        "sha256": file.blob.sha256,
                        "size": size,
                        "pointerSize": len(file.pointer),
                    }
            siblings.append(sibling)
        tags = sorted({p.rsplit(".", 1)[-1] for p in commit.files if p.endswith(LFS_SUFFIXES)})
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created,
            "private": self.token is not None,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "siblings": siblings,
            "spaces": [],
            "usedStorage": total,
        }


class _Server(ThreadingHTTPServer):
    """One listener; tracks its connections so stop() can cut keep-alive ones and join."""

    daemon_threads = True

    def __init__(self, hub: FakeHub, role: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub
        self.role = role
        self._live: dict[socket.socket, threading.Thread] = {}
        self._live_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            daemon=True,
            name=f"fake-hub-{self.role}-conn",
        )
        with self._live_lock:
            self._live[request] = thread
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._live_lock:
                self._live.pop(request, None)

    def close_connections(self) -> None:
        with self._live_lock:
            live = list(self._live.items())
        for sock, _ in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _, thread in live:
            thread.join(timeout=5)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up mid-body is normal here; anything else is a bug worth a trace."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's pooled client expects
    timeout = 30  # an idle keep-alive connection never pins a thread for long

    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the hub's request log is FakeHub.requests."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def _dispatch(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.hub._log(self.command, self.path, headers)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            if self.server.role == "cdn":
                self._cdn()
            elif self._authorized():
                self._route(body)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    # -- responses ---------------------------------------------------------------------------------

    def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(doc).encode()
        content_type = {"Content-Type": "application/json; charset=utf-8"}
        self._reply(status, {**content_type, **(headers or {})}, body)

    def _error(
        self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None
    ) -> None:
        extra = {"X-Error-Message": message, **(headers or {})}
        if code is not None:
            extra["X-Error-Code"] = code
        self._json(status, {"error": message}, extra)

    def _authorized(self) -> bool:
        """The real hub's two 401s: no credentials (reads as RepoNotFound), or wrong ones."""
        token = self.hub.token
        if token is None:
            return True
        sent = self.headers.get("Authorization")
        if sent is None:
            self._error(401, "RepoNotFound", "Invalid username or password.")
            return False
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            self._error(401, None, "Invalid credentials in Authorization header")
            return False
        return True

    # -- hub routes --------------------------------------------------------------------------------

    def _route(self, body: bytes) -> None:
        split = urlsplit(self.path)
        query = parse_qs(split.query)
        segments = split.path.split("/")[1:]
        if len(segments) >= 4 and segments[:2] == ["api", "models"]:
            repo_id = f"{unquote(segments[2])}/{unquote(segments[3])}"
            rest = [unquote(s) for s in segments[4:]]
            if self.command == "POST":
                if len(rest) == 2 and rest[0] == "paths-info":
                    return self._paths_info(repo_id, rest[1], body)
            elif not rest:
                return self._model_info(repo_id, "main", query)
            elif rest[0] == "revision" and len(rest) == 2:
                return self._model_info(repo_id, rest[1], query)
            elif rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo_id, rest[1], "/".join(rest[2:]).strip("/"), query)
        elif len(segments) >= 5 and segments[2] == "resolve" and self.command != "POST":
            repo_id = f"{unquote(segments[0])}/{unquote(segments[1])}"
            return self._resolve(repo_id, unquote(segments[3]), unquote("/".join(segments[4:])))
        self._error(404, None, "Sorry, we can't find the page you are looking for.")

    def _commit(self, repo_id: str, revision: str) -> tuple[_Repo, _Commit] | None:
        """Look the revision up, answering the hub's 404s when it is not there."""
        repo = self.hub._repo(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo, commit

    def _model_info(self, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
        found = self._commit(repo_id, revision)
        if found is not None:
            blobs = _truthy(query.get("blobs"))
            self._json(200, self.hub._info(*found, blobs=blobs))

    def _tree(self, repo_id: str, revision: str, path: str, query: dict[str, list[str]]) -> None:
        found = self._commit(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        prefix = f"{path}/" if path else ""
        if path and not any(p.startswith(prefix) for p in commit.files):
            self._error(404, "EntryNotFound", f'{path} does not exist on "{revision}"')
            return
        recursive = _truthy(query.get("recursive"))
        entries: dict[str, dict[str, Any]] = {}
        for name in sorted(commit.files):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):  # the folders on the way
                folder = prefix + "/".join(parts[:i])
                entries.setdefault(folder, _folder_entry(commit, folder))
            if recursive or len(parts) == 1:
                entries[name] = self.hub._entry(repo.repo_id, commit.files[name])
        self._json(200, list(entries.values()))

    def _paths_info(self, repo_id: str, revision: str, body: bytes) -> None:
        found = self._commit(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        result = []
        for path in parse_qs(body.decode()).get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                result.append(self.hub._entry(repo.repo_id, commit.files[path]))
            elif any(p.startswith(f"{path}/") for p in commit.files):
                result.append(_folder_entry(commit, path))
        self._json(200, result)

    def _resolve(self, repo_id: str, revision: str, filename: str) -> None:
        found = self._commit(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        file = commit.files.get(filename)
        headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
        if file is None:
            self._error(404, "EntryNotFound", "Entry not found", headers)
            return
        size = self.hub._size(repo_id, file)
        if file.lfs:
            location = self.hub._cdn_location(repo.repo_id, file)
            body = f"Found. Redirecting to {location}".encode()
            self._reply(
                302,
                {
                    **headers,
                    "Content-Type": "text/plain; charset=utf-8",
                    "Location": location,
                    "ETag": f'"{file.blob.sha256}"',
                    "X-Linked-Etag": f'"{file.blob.sha256}"',
                    "X-Linked-Size": str(size),
                },
                body,
            )
            return
        headers.update(
            {
                "ETag": f'"{file.blob_id}"',
                "Content-Type": "text/plain; charset=utf-8",
                "Content-Disposition": _disposition(filename),
            }
        )
        self._content(file.blob, (repo_id, filename), headers, advertised=size)

    # -- the CDN -----------------------------------------------------------------------------------

    def _cdn(self) -> None:
        split = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        sha256 = split.path[len(CDN_PREFIX) :] if split.path.startswith(CDN_PREFIX) else ""
        repo_id, filename = query.get("repo", ""), query.get("file", "")
        blob = self.hub._blob(sha256)
        expected = self.hub._sign(sha256, repo_id, filename)
        if blob is None or not hmac.compare_digest(query.get("sig", ""), expected):
            body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            self._reply(403, {"Content-Type": "application/xml"}, body)
            return
        headers = {
            "ETag": f'"{sha256}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": _disposition(filename),
        }
        self._content(blob, (repo_id, filename), headers, advertised=blob.size)

    # -- bodies ------------------------------------------------------------------------------------

    def _content(
        self, blob: _Blob, key: tuple[str, str], headers: dict[str, str], advertised: int
    ) -> None:
        """200 or 206 with the (possibly corrupted, throttled or cut) bytes of ``blob``.

        ``If-Range`` is honoured with a strong comparison against our ETag: on a mismatch the
        Range is ignored and the whole file comes back with 200, as RFC 9110 says.
        """
        asked = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range != headers.get("ETag"):
            asked = None
        try:
            wanted = _parse_range(asked, blob.size)
        except _Unsatisfiable:
            self._error(
                416,
                None,
                "Requested Range Not Satisfiable",
                {"Content-Range": f"bytes */{blob.size}"},
            )
            return
        if wanted is None:
            start, end, status = 0, blob.size, 200
            length = advertised if self.command == "HEAD" else blob.size
        else:
            start, end = wanted
            status, length = 206, end - start
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
        self._reply(status, {**headers, "Content-Length": str(length)})
        if self.command == "HEAD":
            return
        corrupt, drop = self.hub._faults(key)
        sent = 0
        for chunk in blob.chunks(start, end):
            if corrupt:
                chunk = chunk.translate(_FLIP)
            if drop is not None and sent + len(chunk) > drop:
                self.wfile.write(chunk[: drop - sent])
                self.hub._count(key, drop - sent)
                self._cut()
                return
            self.wfile.write(chunk)
            self.hub._count(key, len(chunk))
            sent += len(chunk)
            rate = self.hub._rate
            if rate:
                time.sleep(len(chunk) / rate)

    def _cut(self) -> None:
        """End the connection mid-body, as a network drop would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


def _truthy(values: list[str] | None) -> bool:
    """Query flags as the client sends them (``true``) or as people type them."""
    return values is not None and values[-1].lower() in {"1", "true", "yes"}


def _folder_entry(commit: _Commit, folder: str) -> dict[str, Any]:
    """A directory entry; its oid stands in for the git tree id."""
    oid = hashlib.sha1(f"{commit.sha}\n{folder}".encode()).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": folder}


def _disposition(filename: str) -> str:
    """The hub's Content-Disposition; huggingface_hub shows its filename in progress bars."""
    base = filename.rsplit("/", 1)[-1]
    return f"inline; filename*=UTF-8''{quote(base)}; filename=\"{base}\";"


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=N-``, ``bytes=N-M`` or ``bytes=-S`` as [start, end); None serves everything.

    Syntactically invalid or multi-range headers are ignored (a full 200), as RFC 9110 allows.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, dash, last = header[len("bytes=") :].strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()):
        return None
    if (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:  # suffix: the last S bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _Unsatisfiable
        return max(size - suffix, 0), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise _Unsatisfiable
    return start, min(int(last) + 1, size) if last else size
