from corral.scheduler.policy import Budget, Resident, admit, evict_for

GiB = 1 << 30


def r(
    name: str, need: float, busy: bool = False, used: float = 0, protected: bool = False
) -> Resident:
    return Resident(name, int(need * GiB), busy, used, protected)


def test_fits_without_eviction() -> None:
    assert admit(2 * GiB, [r("a", 2)], Budget(8 * GiB)).load_now


def test_idle_models_go_least_recently_used_first() -> None:
    residents = [r("old", 3, used=1), r("new", 3, used=5)]
    verdict = admit(4 * GiB, residents, Budget(8 * GiB))
    assert verdict.evict == ("old",) and not verdict.wait_for


def test_busy_models_are_spared_while_idle_ones_can_go() -> None:
    residents = [r("busy", 3, busy=True, used=0), r("idle", 3, used=9)]
    assert admit(4 * GiB, residents, Budget(8 * GiB)).evict == ("idle",)


def test_busy_model_must_drain_when_nothing_idle_is_left() -> None:
    residents = [r("busy", 5, busy=True)]
    verdict = admit(4 * GiB, residents, Budget(8 * GiB))
    assert verdict.wait_for == ("busy",) and not verdict.evict and not verdict.load_now


def test_as_few_victims_as_needed() -> None:
    residents = [r("a", 1, used=1), r("b", 1, used=2), r("c", 4, used=3)]
    assert [v.name for v in evict_for(3 * GiB, residents, Budget(8 * GiB))] == ["a"]


def test_pinned_and_preloaded_are_never_evicted() -> None:
    residents = [r("pinned", 4, used=0, protected=True), r("other", 2, used=5)]
    assert admit(4 * GiB, residents, Budget(8 * GiB)).evict == ("other",)


def test_too_large_is_refused_with_numbers() -> None:
    verdict = admit(int(9.2 * GiB), [], Budget(8 * GiB))
    assert verdict.refusal == "needs 9.2 GiB, budget 8.0 GiB"


def test_refused_when_pinned_models_leave_too_little() -> None:
    verdict = admit(5 * GiB, [r("pinned", 4, protected=True)], Budget(8 * GiB))
    assert (
        verdict.refusal is not None and "pinned or preloaded models hold 4.0 GiB" in verdict.refusal
    )


def test_model_count_limit() -> None:
    residents = [r("a", 1, used=1), r("b", 1, used=2)]
    assert admit(GiB, residents, Budget(100 * GiB, max_models=2)).evict == ("a",)
    protected = [r("a", 1, protected=True), r("b", 1, protected=True)]
    assert admit(GiB, protected, Budget(100 * GiB, max_models=2)).refusal is not None
