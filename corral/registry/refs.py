"""What a user may ask ``corral pull`` for, parsed without touching the network.

- ``hf.co/ORG/REPO[:QUANT_OR_FILE]``: one GGUF from a Hub repo (Ollama's syntax);
- ``ORG/REPO``: a whole safetensors or ONNX repo from the Hub;
- ``https://.../file.gguf``: one file from any web server;
- a local path (``./x.gguf``, ``/abs/dir``, ``~/x.onnx``, ``file:///abs/x.gguf``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from corral.errors import InvalidReference
from corral.registry.names import canonical_name

Kind = Literal["hub_gguf", "hub_repo", "url", "path"]
_HUB_PREFIXES = ("hf.co/", "huggingface.co/", "https://hf.co/", "https://huggingface.co/")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Reference:
    kind: Kind
    text: str  # as given
    repo: str | None = None  # ORG/REPO for Hub references
    selector: str | None = None  # quant or file name after ":" in hf.co references
    url: str | None = None
    path: Path | None = None

    @property
    def default_name(self) -> str:
        """The model name a pull creates unless told otherwise (Ollama's choice for
        ``hf.co`` references: the reference itself)."""
        if self.kind == "hub_gguf":
            return canonical_name(f"hf.co/{self.repo}:{self.selector or 'latest'}")
        if self.kind == "hub_repo":
            return canonical_name(str(self.repo))
        if self.kind == "url":
            stem = Path(unquote(urlparse(str(self.url)).path)).name
            return canonical_name(_safe_stem(stem) or "model")
        assert self.path is not None
        return canonical_name(_safe_stem(self.path.name) or "model")

    @property
    def canonical(self) -> str:
        """One spelling per source, for lock files and for recognising a repeat pull."""
        if self.kind == "hub_gguf":
            return f"hf.co/{self.repo}" + (f":{self.selector}" if self.selector else "")
        if self.kind == "hub_repo":
            return str(self.repo)
        if self.kind == "url":
            return str(self.url)
        return str(self.path)


def parse_reference(text: str, *, base: Path | None = None, probe: bool = True) -> Reference:
    """What ``text`` refers to. ``probe=False``: never look at the disk to tell (a bare
    name is then no path, whatever exists): the API must not say which files exist."""
    raw = text.strip()
    if not raw:
        raise InvalidReference("Empty model reference.")
    if raw.lower().startswith("file:"):
        parsed = urlparse(raw)
        if parsed.netloc not in ("", "localhost") or not parsed.path:
            raise InvalidReference(f"{text!r}: a file URL names a file here: file:///PATH.")
        return Reference("path", raw, path=_real(Path(unquote(parsed.path))))
    for prefix in _HUB_PREFIXES:
        if raw.startswith(prefix):
            rest = raw[len(prefix) :]
            repo, _, selector = rest.partition(":")
            if not _REPO.match(repo):
                raise InvalidReference(
                    f"{text!r}: a Hub reference is hf.co/ORG/REPO[:QUANT_OR_FILE]."
                )
            return Reference("hub_gguf", raw, repo=repo, selector=selector or None)
    if raw.startswith(("http://", "https://")):
        parsed = urlparse(raw)
        if not parsed.netloc or not parsed.path.strip("/"):
            raise InvalidReference(f"{text!r}: a URL must name a file.")
        return Reference("url", raw, url=raw)
    if raw.startswith(("/", "./", "../", "~")) or raw.endswith((".gguf", ".onnx")):
        path = Path(raw).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        return Reference("path", raw, path=_real(path))
    if _REPO.match(raw):
        return Reference("hub_repo", raw, repo=raw)
    if probe and Path(raw).exists():
        return Reference("path", raw, path=_real(Path(raw)))
    raise InvalidReference(
        f"Cannot tell what {text!r} refers to. Use hf.co/ORG/REPO[:QUANT] for a GGUF on "
        "the Hugging Face Hub, ORG/REPO for a whole repo, an https:// URL, or a local path."
    )


def _real(path: Path) -> Path:
    """``path`` absolute, links resolved: ``os.path.realpath``, which unlike
    ``Path.resolve`` does not stat the result (nothing outside the import dirs is
    looked at for an API caller, ``corral.registry.access``)."""
    return Path(os.path.realpath(path))


def _safe_stem(name: str) -> str:
    for suffix in (".gguf", ".onnx", ".safetensors"):
        name = name.removesuffix(suffix)
    return _SAFE.sub("-", name).strip("-._").lower()
