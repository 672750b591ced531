"""Per-key limits: requests and tokens per minute, tokens per day, requests at once.

Requests and tokens per minute are token buckets (the capacity is the per-minute
figure, refilled continuously), as OpenAI's limits behave. A request takes one from
the request bucket on entry; its tokens (prompt plus completion) are charged to the
token bucket when its answer ends, since only then are they known, so the bucket can
go below zero and holds the next requests back until it has refilled. Daily tokens
are counted per UTC day and saved to the database every few seconds (``flush``), so
a restart does not reset a quota.

Several gateways on one database share the per-minute limits: each writes what it
let each key spend (running totals) every second (``sync``) and drains its own
buckets by what the others' totals grew by since it last looked. A key's limit then
holds across gateways to within what they let through in one sync interval.

An interactive request over a limit is refused with a 429 that says which limit, when
to retry (``Retry-After``) and OpenAI's ``x-ratelimit-*`` headers. A batch's requests
wait instead (``patient``): a batch is slowed by its key's limits, never failed.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from corral.errors import RateLimited
from corral.keys.store import Principal
from corral.keys.tables import KeyRateRow, KeyUsageRow

RATES_KEPT = 3600.0  # seconds a silent gateway's totals are kept


@dataclass
class _Bucket:
    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        rate = self.capacity / 60.0
        self.level = min(self.capacity, self.level + (now - self.updated) * rate)
        self.updated = now

    def seconds_until(self, amount: float) -> float:
        """How long until the bucket holds ``amount`` (0 if it does now)."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing / (self.capacity / 60.0)


@dataclass
class _KeyState:
    requests: _Bucket | None = None
    tokens: _Bucket | None = None
    in_flight: int = 0
    day: str = ""
    used_today: int = 0  # tokens, including those not yet saved
    unsaved: int = 0
    # Shared with other gateways (``sync``): what this one let the key spend since it
    # started, what of that the database has, and what the others spent, not yet taken
    # from this gateway's buckets.
    spent: tuple[int, int] = (0, 0)  # requests, tokens
    written: tuple[int, int] = (0, 0)
    drain_requests: int = 0
    drain_tokens: int = 0

    def drain(self) -> None:
        """Take what other gateways spent from the buckets (after a refill)."""
        if self.requests is not None:
            self.requests.level -= self.drain_requests
        if self.tokens is not None:
            self.tokens.level -= self.drain_tokens
        self.drain_requests = self.drain_tokens = 0


@dataclass(frozen=True)
class Admission:
    """A request let in: ``release`` it with its tokens when its answer ends."""

    principal: Principal
    headers: dict[str, str] = field(default_factory=dict)


def _today(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def _reset(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``20ms``."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


class Limiter:
    def __init__(
        self,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine  # where daily use is saved (None: memory only)
        self._clock = clock
        self._wall = wall
        self._keys: dict[str, _KeyState] = {}
        self._seen: dict[tuple[str, str], tuple[int, int]] = {}  # other gateways' totals
        self._pruned = 0.0
        self._looked = False  # has sync read the other gateways' totals yet
        self._lock = threading.Lock()
        self.refusals: dict[str, int] = {}  # by key name: 429s given (for /metrics)

    # --- entry and exit -----------------------------------------------------------------

    def try_enter(self, p: Principal) -> tuple[Admission | None, float, RateLimited | None]:
        """Let a request in now, or say how long until it could be (and why not)."""
        with self._lock:
            now, wall = self._clock(), self._wall()
            st = self._state(p, now, wall)
            waits: list[tuple[float, str]] = []
            if st.requests is not None:
                st.requests.refill(now)
            if st.tokens is not None:
                st.tokens.refill(now)
            st.drain()
            if st.requests is not None and (w := st.requests.seconds_until(1)) > 0:
                waits.append((w, f"{p.rpm} requests per minute"))
            if st.tokens is not None and (w := st.tokens.seconds_until(1)) > 0:
                waits.append((w, f"{p.tpm} tokens per minute"))
            if p.daily_tokens is not None and st.used_today >= p.daily_tokens:
                waits.append((_seconds_to_midnight(wall), f"{p.daily_tokens} tokens per day"))
            if p.max_concurrent is not None and st.in_flight >= p.max_concurrent:
                waits.append((0.25, f"{p.max_concurrent} requests at once"))
            if waits:
                wait, which = max(waits)
                return None, wait, self._refusal(p, st, wait, which)
            if st.requests is not None:
                st.requests.level -= 1
            st.in_flight += 1
            st.spent = (st.spent[0] + 1, st.spent[1])
            return Admission(p, self._headers(p, st)), 0.0, None

    def enter(self, p: Principal) -> Admission:
        """Let an interactive request in, or raise the 429 that says why not."""
        admission, _, refusal = self.try_enter(p)
        if admission is None:
            assert refusal is not None
            self.refusals[p.name] = self.refusals.get(p.name, 0) + 1
            raise refusal
        return admission

    async def enter_patiently(self, p: Principal) -> Admission:
        """Wait until the key's limits let a request in (a batch's requests)."""
        while True:
            admission, wait, _ = self.try_enter(p)
            if admission is not None:
                return admission
            await asyncio.sleep(min(max(wait, 0.05), 5.0))

    def leave(self, admission: Admission, tokens: int) -> None:
        """The request's answer ended, having used ``tokens`` (prompt + completion)."""
        p = admission.principal
        with self._lock:
            now, wall = self._clock(), self._wall()
            st = self._state(p, now, wall)
            st.in_flight = max(0, st.in_flight - 1)
            if st.tokens is not None:
                st.tokens.refill(now)
                st.tokens.level -= tokens
            st.used_today += tokens
            st.unsaved += tokens
            st.spent = (st.spent[0], st.spent[1] + tokens)

    # --- daily use --------------------------------------------------------------------------

    def flush(self) -> None:
        """Save the daily tokens counted since the last flush (the gateway calls this
        every few seconds, off the event loop, and at shutdown)."""
        if self.engine is None:
            return
        with self._lock:
            pending = [(k, st.day, st.unsaved) for k, st in self._keys.items() if st.unsaved]
            for key_id, _, _ in pending:
                self._keys[key_id].unsaved = 0
        if not pending:
            return
        with Session(self.engine) as session, session.begin():
            for key_id, day, tokens in pending:
                row = session.get(KeyUsageRow, (key_id, day))
                if row is None:
                    session.add(KeyUsageRow(key_id=key_id, day=day, tokens=tokens))
                else:
                    row.tokens += tokens

    # --- several gateways ------------------------------------------------------------------

    def sync(self, gateway: str) -> None:
        """Write what this gateway let each key spend; drain its buckets by what the
        others did since the last sync (the gateway calls this every second, off the
        event loop). ``gateway`` names this process (a restart is a new one)."""
        if self.engine is None:
            return
        wall = self._wall()
        with self._lock:
            mine = {k: st.spent for k, st in self._keys.items() if st.spent != st.written}
        with Session(self.engine) as session, session.begin():
            for key_id, (requests, tokens) in mine.items():
                row = session.get(KeyRateRow, (key_id, gateway))
                if row is None:
                    session.add(
                        KeyRateRow(
                            key_id=key_id,
                            gateway=gateway,
                            requests=requests,
                            tokens=tokens,
                            updated=wall,
                        )
                    )
                else:
                    row.requests, row.tokens, row.updated = requests, tokens, wall
            others = session.execute(
                select(
                    KeyRateRow.key_id, KeyRateRow.gateway, KeyRateRow.requests, KeyRateRow.tokens
                ).where(KeyRateRow.gateway != gateway, KeyRateRow.updated > wall - RATES_KEPT)
            ).all()
            if self._pruned < wall - RATES_KEPT:  # gateways long gone
                session.execute(delete(KeyRateRow).where(KeyRateRow.updated < wall - RATES_KEPT))
                self._pruned = wall
        with self._lock:
            for key_id, spent in mine.items():
                if key_id in self._keys:
                    self._keys[key_id].written = spent
            for key_id, other, requests, tokens in others:
                seen = self._seen.get((key_id, other))
                self._seen[(key_id, other)] = (requests, tokens)
                if seen is None:
                    if not self._looked:
                        continue  # at start: what others spent before is in the past
                    # A row is made at a gateway's first spend of a key: one that was
                    # not there at the last look holds only spending since then.
                    seen = (0, 0)
                st = self._keys.setdefault(key_id, _KeyState())
                st.drain_requests += max(0, requests - seen[0])
                st.drain_tokens += max(0, tokens - seen[1])
            self._looked = True

    def _saved_today(self, key_id: str, day: str) -> int:
        if self.engine is None:
            return 0
        with Session(self.engine) as session:
            query = select(KeyUsageRow.tokens).where(
                KeyUsageRow.key_id == key_id, KeyUsageRow.day == day
            )
            return int(session.scalar(query) or 0)

    # --- helpers ------------------------------------------------------------------------

    def _state(self, p: Principal, now: float, wall: float) -> _KeyState:
        st = self._keys.get(p.key_id)
        if st is None:
            st = self._keys[p.key_id] = _KeyState()
        # Limits follow the key as it is now (a changed rpm applies at once).
        st.requests = _resized(st.requests, p.rpm, now)
        st.tokens = _resized(st.tokens, p.tpm, now)
        day = _today(wall)
        if st.day != day:
            st.day, st.unsaved = day, 0
            st.used_today = self._saved_today(p.key_id, day) if p.daily_tokens else 0
        return st

    def _headers(self, p: Principal, st: _KeyState) -> dict[str, str]:
        headers: dict[str, str] = {}
        if st.requests is not None and p.rpm is not None:
            headers["x-ratelimit-limit-requests"] = str(p.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, int(st.requests.level)))
            refill = st.requests.seconds_until(st.requests.capacity)
            headers["x-ratelimit-reset-requests"] = _reset(refill)
        if st.tokens is not None and p.tpm is not None:
            headers["x-ratelimit-limit-tokens"] = str(p.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, int(st.tokens.level)))
            refill = st.tokens.seconds_until(st.tokens.capacity)
            headers["x-ratelimit-reset-tokens"] = _reset(refill)
        return headers

    def _refusal(self, p: Principal, st: _KeyState, wait: float, which: str) -> RateLimited:
        headers = self._headers(p, st)
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return RateLimited(
            f"Rate limit reached for the API key '{p.name}': {which}. Retry in {_reset(wait)}.",
            headers=headers,
        )


def _resized(bucket: _Bucket | None, per_minute: int | None, now: float) -> _Bucket | None:
    if per_minute is None:
        return None
    if bucket is None:
        return _Bucket(float(per_minute), float(per_minute), now)
    if bucket.capacity != per_minute:
        bucket.capacity = float(per_minute)
        bucket.level = min(bucket.level, bucket.capacity)
    return bucket


def _seconds_to_midnight(wall: float) -> float:
    return 86400.0 - (wall % 86400.0)
