"""API keys and their limits, without a server: the store and the token buckets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.errors import AuthenticationRequired, InvalidRequest, KeyNotFound, RateLimited
from corral.keys import store as store_module
from corral.keys.limits import Limiter
from corral.keys.store import KeyStore, Principal, sees
from corral.registry.db import open_database


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore(open_database(f"sqlite:///{tmp_path / 'registry.db'}"))


def test_a_key_is_shown_once_and_stored_only_as_its_hash(keys: KeyStore) -> None:
    created = keys.create("ci", models=["demo", "other:v2"], rpm=5)
    assert created.secret.startswith("sk-corral-") and len(created.secret) > 40
    with keys.engine.connect() as connection:
        dumped = "".join(map(str, connection.exec_driver_sql("SELECT * FROM api_keys")))
    assert created.secret not in dumped and created.secret[14:] not in dumped
    principal = keys.authenticate(created.secret)
    assert principal.name == "ci" and principal.scope == "inference" and principal.rpm == 5
    assert principal.models == {"demo:latest", "other:v2"}
    assert principal.may_use("demo") and principal.may_use("demo:latest")
    assert not principal.may_use("third")
    assert principal.may_use("demo:3"), "a bare name covers every version"
    assert principal.may_use("other:v2") and not principal.may_use("other:v3")


def test_unknown_revoked_and_expired_keys_are_refused(
    keys: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(AuthenticationRequired):
        keys.authenticate("sk-corral-nope")
    gone = keys.create("gone")
    keys.revoke("gone")
    with pytest.raises(AuthenticationRequired, match="revoked"):
        keys.authenticate(gone.secret)
    with pytest.raises(KeyNotFound):
        keys.revoke("never-made")
    soon = keys.create("soon", expires_in=60)
    assert keys.authenticate(soon.secret).name == "soon"
    later = store_module.time.time() + 61
    monkeypatch.setattr(store_module.time, "time", lambda: later)
    with pytest.raises(AuthenticationRequired, match="expired"):
        keys.authenticate(soon.secret)


def test_names_are_unique_and_values_checked(keys: KeyStore) -> None:
    keys.create("one")
    with pytest.raises(InvalidRequest, match="exists"):
        keys.create("one")
    with pytest.raises(InvalidRequest, match="rpm"):
        keys.create("two", rpm=0)
    with pytest.raises(InvalidRequest, match="scope"):
        keys.create("three", scope="root")  # type: ignore[arg-type]


def test_a_key_made_elsewhere_is_seen_within_the_refresh(keys: KeyStore, tmp_path: Path) -> None:
    other = KeyStore(open_database(f"sqlite:///{tmp_path / 'registry.db'}"))  # another process
    assert not keys.any()
    created = other.create("from-the-cli")
    keys._loaded_at = -store_module.REFRESH_SECONDS  # as if two seconds had passed
    assert keys.any() and keys.authenticate(created.secret).name == "from-the-cli"


def test_who_sees_whose_files_and_batches() -> None:
    alice = Principal("key_a", "alice", "inference", frozenset())
    admin = Principal("key_r", "root", "admin", frozenset())
    assert sees(None, "key_a") and sees(None, None)  # no keys: no ownership
    assert sees(alice, "key_a") and not sees(alice, "key_b") and not sees(alice, None)
    assert sees(admin, None) and not sees(admin, "key_a")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limited(**limits: int) -> Principal:
    return Principal("key_l", "limited", "inference", frozenset(), **limits)  # type: ignore[arg-type]


def test_requests_per_minute_refill_continuously() -> None:
    clock = Clock()
    limiter = Limiter(clock=clock, wall=lambda: 86400.0 * 20000 + 3600)
    key = limited(rpm=2)
    first = limiter.enter(key)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    limiter.enter(key)
    with pytest.raises(RateLimited) as refused:
        limiter.enter(key)
    headers = refused.value.headers
    assert refused.value.status == 429 and headers["Retry-After"] == "30"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert "2 requests per minute" in refused.value.message
    clock.now += 30  # one request's worth
    limiter.enter(key)


def test_tokens_are_charged_when_the_answer_ends() -> None:
    clock = Clock()
    limiter = Limiter(clock=clock)
    key = limited(tpm=600)
    admission = limiter.enter(key)
    limiter.leave(admission, 1000)  # over the minute's budget: the bucket goes below zero
    with pytest.raises(RateLimited, match="600 tokens per minute") as refused:
        limiter.enter(key)
    assert int(refused.value.headers["Retry-After"]) == 41  # 401 tokens at 10 per second
    clock.now += 41
    limiter.enter(key)


def test_daily_tokens_survive_a_restart(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'registry.db'}")
    keys = KeyStore(engine)
    key = keys.authenticate(keys.create("daily", daily_tokens=100).secret)
    day = 86400.0 * 20000 + 3600
    limiter = Limiter(engine, wall=lambda: day)
    limiter.leave(limiter.enter(key), 60)
    limiter.leave(limiter.enter(key), 50)
    limiter.flush()
    restarted = Limiter(engine, wall=lambda: day)
    with pytest.raises(RateLimited, match="100 tokens per day") as refused:
        restarted.enter(key)
    assert int(refused.value.headers["Retry-After"]) == 86400 - 3600
    tomorrow = Limiter(engine, wall=lambda: day + 86400)
    tomorrow.enter(key)


def test_per_minute_limits_hold_across_gateways_on_one_database(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'registry.db'}")
    keys = KeyStore(engine)
    key = keys.authenticate(keys.create("shared", rpm=10, tpm=1000).secret)
    clock = Clock()
    a, b = Limiter(engine, clock=clock), Limiter(engine, clock=clock)
    b.enter(key)  # b has seen the key before
    for sync in (a.sync, b.sync):
        sync("a" if sync == a.sync else "b")  # each sees the other's totals: a baseline
    for _ in range(6):
        a.leave(a.enter(key), 100)  # 6 requests, 600 tokens, on a
    a.sync("a")
    b.sync("b")  # b drains its buckets by what a spent
    for _ in range(3):
        b.enter(key)  # 1 + 6 + 3 = 10: the minute's requests are used up
    with pytest.raises(RateLimited, match="10 requests per minute"):
        b.enter(key)
    b.sync("b")
    a.sync("a")
    with pytest.raises(RateLimited, match="10 requests per minute"):
        a.enter(key)  # and a knows b's share too
    clock.now += 6  # one request refills in 6 s, on both
    a.enter(key)
    a.sync("a")
    b.sync("b")
    with pytest.raises(RateLimited):
        b.enter(key)


def test_requests_at_once_and_a_batch_that_waits_instead_of_failing() -> None:
    limiter = Limiter()
    key = limited(max_concurrent=1)
    first = limiter.enter(key)
    with pytest.raises(RateLimited, match="1 requests at once"):
        limiter.enter(key)

    async def batch_request() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        loop.call_later(0.3, limiter.leave, first, 0)
        await limiter.enter_patiently(key)
        return loop.time() - started

    assert asyncio.run(batch_request()) >= 0.3  # it waited for the slot, then ran
