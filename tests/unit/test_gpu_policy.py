"""GPU memory as a second, per-device budget: placement, eviction, refusal."""

from __future__ import annotations

from corral.scheduler.policy import Budget, Gpu, Resident, VramNeed, admit

GiB = 1 << 30
RAM = Budget(64 * GiB)


def gpus(*free_gib: float, total: float = 24) -> dict[int, Gpu]:
    return {i: Gpu(int(f * GiB), int(total * GiB)) for i, f in enumerate(free_gib)}


def on(
    name: str, gpu: int, gib: float, busy: bool = False, used: float = 0, protected: bool = False
) -> Resident:
    return Resident(name, GiB, busy, used, protected, (gpu,), int(gib * GiB))


def test_without_gpus_nothing_changes_and_vram_needs_are_refused_plainly() -> None:
    assert admit(GiB, [], RAM).load_now and admit(GiB, [], RAM).devices == ()
    verdict = admit(GiB, [], RAM, VramNeed(8 * GiB))
    assert verdict.refusal == "needs 8.0 GiB of GPU memory, and no GPU was found"


def test_a_model_goes_where_it_fits_with_the_most_room_left() -> None:
    budget = Budget(64 * GiB, gpus=gpus(22, 22))
    residents = [on("a", 0, 10)]
    verdict = admit(GiB, residents, budget, VramNeed(8 * GiB))
    assert verdict.load_now and verdict.devices == (1,)


def test_a_full_gpu_evicts_its_idle_models_least_recently_used_first() -> None:
    budget = Budget(64 * GiB, gpus=gpus(22))
    residents = [on("old", 0, 10, used=1), on("new", 0, 10, used=5)]
    verdict = admit(GiB, residents, budget, VramNeed(8 * GiB))
    assert verdict.evict == ("old",) and verdict.devices == (0,)


def test_the_gpu_needing_no_busy_eviction_is_chosen() -> None:
    budget = Budget(64 * GiB, gpus=gpus(20, 20))
    residents = [on("busy", 0, 18, busy=True), on("idle", 1, 18)]
    verdict = admit(GiB, residents, budget, VramNeed(8 * GiB))
    assert verdict.devices == (1,) and verdict.evict == ("idle",) and not verdict.wait_for


def test_ram_evictions_free_their_gpu_memory_too() -> None:
    """Evicted for RAM, a model's VRAM is free: no second victim on the GPU."""
    budget = Budget(4 * GiB, gpus=gpus(20))
    residents = [
        Resident("ram-hog", 3 * GiB, False, 1, False, (0,), 16 * GiB),
        on("other", 0, 2, used=9),
    ]
    verdict = admit(2 * GiB, residents, budget, VramNeed(8 * GiB))
    assert verdict.evict == ("ram-hog",) and verdict.devices == (0,)


def test_tensor_parallel_models_take_several_gpus_and_shares_count_per_device() -> None:
    budget = Budget(64 * GiB, gpus=gpus(22, 22, 10))
    verdict = admit(GiB, [], budget, VramNeed(0, share=0.5, devices=2))  # 12 GiB each
    assert verdict.devices == (0, 1)
    too_many = admit(GiB, [], budget, VramNeed(GiB, devices=4))
    assert too_many.refusal == "spans 4 GPUs, and 3 were found"


def test_a_model_larger_than_any_gpu_or_what_pins_leave_is_refused_with_numbers() -> None:
    budget = Budget(64 * GiB, gpus=gpus(22, 22))
    residents = [on("pinned", 1, 20, protected=True)]
    verdict = admit(GiB, residents, budget, VramNeed(23 * GiB))
    assert verdict.refusal is not None
    assert "23.0 GiB of GPU memory" in verdict.refusal
    assert "GPU 0 has 22.0 GiB" in verdict.refusal and "GPU 1 has 2.0 GiB" in verdict.refusal
