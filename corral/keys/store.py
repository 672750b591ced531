"""API keys: created, listed, revoked, and checked on every request.

A key's secret is shown once, at creation; the database keeps its SHA-256. Checking a
request's key is a dictionary lookup in a snapshot of the (few) live keys, refreshed
from the database every ``REFRESH_SECONDS``, so that a key created or revoked by the
CLI, or by another gateway sharing a Postgres registry, takes effect within seconds
without a query per request.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.errors import AuthenticationRequired, InvalidRequest, KeyNotFound
from corral.keys.tables import ApiKeyRow
from corral.registry.names import canonical_name

Scope = Literal["inference", "admin"]
SCOPES: tuple[Scope, ...] = ("inference", "admin")
SECRET_PREFIX = "sk-corral-"
REFRESH_SECONDS = 2.0


@dataclass(frozen=True)
class Principal:
    """The key a request was made with, as every check downstream sees it."""

    key_id: str
    name: str
    scope: Scope
    models: frozenset[str]  # canonical names; empty: every model
    rpm: int | None = None
    tpm: int | None = None
    daily_tokens: int | None = None
    max_concurrent: int | None = None
    expires_at: float | None = None

    @property
    def admin(self) -> bool:
        return self.scope == "admin"

    def may_use(self, *names: str) -> bool:
        """Whether the key may use a model known by any of ``names``. A bare name on the
        key (``iris``) covers every version and tag of it; ``iris:2`` that one only."""
        if not self.models:
            return True
        for name in names:
            canonical = canonical_name(name)
            bare = canonical.rpartition(":")[0] + ":latest"
            if canonical in self.models or bare in self.models:
                return True
        return False

    @property
    def limited(self) -> bool:
        return any(
            x is not None for x in (self.rpm, self.tpm, self.daily_tokens, self.max_concurrent)
        )


@dataclass(frozen=True)
class NewKey:
    """What ``create`` hands back: the secret, once, and the key as stored."""

    secret: str
    key: KeyInfo


@dataclass(frozen=True)
class KeyInfo:
    """A key as ``list`` shows it: never its secret."""

    id: str
    name: str
    prefix: str
    scope: Scope
    models: list[str]
    rpm: int | None
    tpm: int | None
    daily_tokens: int | None
    max_concurrent: int | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= time.time():
            return "expired"
        return "active"


def sees(viewer: Principal | None, owner: str | None) -> bool:
    """Whether a request made with ``viewer`` may see a file or batch made by ``owner``
    (key ids). With no keys (viewer None) there is no ownership: all is visible. A key
    sees what it made; an admin key also what was made before keys existed."""
    return viewer is None or owner == viewer.key_id or (owner is None and viewer.admin)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._by_hash: dict[str, tuple[Principal, float | None]] = {}
        self._by_id: dict[str, Principal] = {}
        self._loaded_at = -REFRESH_SECONDS

    # --- managing keys ------------------------------------------------------------------

    def create(
        self,
        name: str,
        scope: Scope = "inference",
        models: Iterable[str] = (),
        rpm: int | None = None,
        tpm: int | None = None,
        daily_tokens: int | None = None,
        max_concurrent: int | None = None,
        expires_in: float | None = None,
    ) -> NewKey:
        if scope not in SCOPES:
            raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}.", param="scope")
        name = name.strip()
        if not name or len(name) > 128:
            raise InvalidRequest("A key needs a name of 1 to 128 characters.", param="name")
        for param, value in (
            ("rpm", rpm),
            ("tpm", tpm),
            ("daily_tokens", daily_tokens),
            ("max_concurrent", max_concurrent),
        ):
            if value is not None and value < 1:
                raise InvalidRequest(f"{param} must be at least 1.", param=param)
        if expires_in is not None and expires_in <= 0:
            raise InvalidRequest("expires must be in the future.", param="expires")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        row = ApiKeyRow(
            id="key_" + uuid.uuid4().hex[:20],
            name=name,
            secret_sha256=secret_hash(secret),
            prefix=secret[: len(SECRET_PREFIX) + 4],
            scope=scope,
            models=sorted({canonical_name(m) for m in models if m.strip()}),
            rpm=rpm,
            tpm=tpm,
            daily_tokens=daily_tokens,
            max_concurrent=max_concurrent,
            created_at=now,
            expires_at=None if expires_in is None else now + expires_in,
            revoked_at=None,
        )
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                session.add(row)
        except IntegrityError:
            raise InvalidRequest(f"A key named {name!r} exists.", param="name") from None
        self._loaded_at = -REFRESH_SECONDS  # the next check sees it
        return NewKey(secret, _info(row))

    def list(self, include_revoked: bool = False) -> list[KeyInfo]:
        with Session(self.engine) as session:
            query = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
            if not include_revoked:
                query = query.where(ApiKeyRow.revoked_at.is_(None))
            return [_info(row) for row in session.scalars(query)]

    def revoke(self, id_or_name: str) -> KeyInfo:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            row = session.scalars(
                select(ApiKeyRow).where(
                    (ApiKeyRow.id == id_or_name) | (ApiKeyRow.name == id_or_name)
                )
            ).first()
            if row is None:
                raise KeyNotFound(f"No API key with the id or name {id_or_name!r}.")
            if row.revoked_at is None:
                row.revoked_at = time.time()
        self._loaded_at = -REFRESH_SECONDS
        return _info(row)

    # --- checking requests --------------------------------------------------------------

    def any(self) -> bool:
        """Whether any live key exists (then every non-public route needs one)."""
        self._refresh()
        return bool(self._by_hash)

    def authenticate(self, secret: str) -> Principal:
        """The key ``secret`` is, or a 401 saying why not."""
        self._refresh()
        found = self._by_hash.get(secret_hash(secret)) if secret else None
        if found is None:
            shown = f" ({secret[:14]}...)" if secret.startswith(SECRET_PREFIX) else ""
            raise AuthenticationRequired(
                f"Incorrect or revoked API key provided{shown}. Create one with "
                "`corral keys create`; send it as 'Authorization: Bearer <key>'."
            )
        principal, expires_at = found
        if expires_at is not None and expires_at <= time.time():
            raise AuthenticationRequired(f"The API key '{principal.name}' has expired.")
        return principal

    def by_id(self, key_id: str) -> Principal | None:
        """A live key by id (the batch runner acts for a batch's key)."""
        self._refresh()
        return self._by_id.get(key_id)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._loaded_at < REFRESH_SECONDS:
            return
        with self._lock:
            if now - self._loaded_at < REFRESH_SECONDS:
                return
            with Session(self.engine) as session:
                rows = list(
                    session.scalars(select(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None)))
                )
            by_hash = {r.secret_sha256: (_principal(r), r.expires_at) for r in rows}
            self._by_hash = by_hash
            self._by_id = {p.key_id: p for p, _ in by_hash.values()}
            self._loaded_at = now


def _principal(row: ApiKeyRow) -> Principal:
    info = _info(row)
    return Principal(
        key_id=info.id,
        name=info.name,
        scope=info.scope,
        models=frozenset(info.models),
        rpm=info.rpm,
        tpm=info.tpm,
        daily_tokens=info.daily_tokens,
        max_concurrent=info.max_concurrent,
        expires_at=info.expires_at,
    )


def _info(row: ApiKeyRow) -> KeyInfo:
    scope: Scope = "admin" if row.scope == "admin" else "inference"
    return KeyInfo(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scope=scope,
        models=list(row.models or ()),
        rpm=row.rpm,
        tpm=row.tpm,
        daily_tokens=row.daily_tokens,
        max_concurrent=row.max_concurrent,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )
