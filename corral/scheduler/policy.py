"""Placement policy: pure decisions about what may be loaded and what must go.

Nothing here logs, measures or acts; it maps facts to a verdict, so every rule is
unit-tested in microseconds. The scheduler core carries verdicts out.

Rules:
- a model fits if the models kept plus it stay within the memory budget and the
  model-count limit;
- to make room, idle models go first, least recently used first; busy models
  (serving, queued or loading) go last, and only after they drain;
- pinned and preloaded models never go;
- a model that cannot fit even with everything evictable gone is refused, with
  the numbers;
- GPU memory is a second budget, per device: a model that needs VRAM goes on the
  devices (as many as it spans) where it fits with the fewest evictions, busy ones
  counting most, then with the most room left. Without GPUs nothing here changes,
  and a model that needs VRAM is refused, saying there is none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from corral.units import format_size


@dataclass(frozen=True)
class Resident:
    """A model holding (or about to hold) memory, as the policy sees it."""

    name: str
    need: int  # bytes accounted: the estimate, or the measured size if larger
    busy: bool  # serving, queued, loading or stopping: not evictable right now
    last_used: float
    protected: bool = False  # pinned or preloaded
    gpus: tuple[int, ...] = ()  # the devices it holds memory on
    vram_per_device: int = 0
    leaving: bool = False  # stopping or falling asleep already: its GPU memory is coming


@dataclass(frozen=True)
class Gpu:
    budget: int  # bytes models may hold on it in all
    total: int  # the device's memory, for needs given as a share of it


@dataclass(frozen=True)
class Budget:
    memory: int
    max_models: int = 0  # 0 = no limit
    gpus: Mapping[int, Gpu] = field(default_factory=dict)  # by device index


@dataclass(frozen=True)
class VramNeed:
    """GPU memory one model needs: ``bytes`` split over ``devices`` GPUs, or ``share``
    of each one's memory, whichever is more."""

    bytes: int = 0
    share: float = 0.0
    devices: int = 1
    only: tuple[int, ...] = ()  # a sleeping worker wakes on the GPUs it was started on

    def __bool__(self) -> bool:
        return self.bytes > 0 or self.share > 0

    def on(self, gpu: Gpu) -> int:
        return max(-(-self.bytes // max(1, self.devices)), int(self.share * gpu.total))


@dataclass(frozen=True)
class Verdict:
    evict: tuple[str, ...] = ()  # idle models to stop now
    wait_for: tuple[str, ...] = ()  # busy models that must drain and stop first
    refusal: str | None = None  # can never fit: why, with numbers
    devices: tuple[int, ...] = ()  # the GPUs it is to load on
    for_ram: tuple[str, ...] = ()  # the victims RAM needs (the rest go for GPU memory)

    @property
    def load_now(self) -> bool:
        return self.refusal is None and not self.evict and not self.wait_for


def fits(used: int, count: int, need: int, budget: Budget) -> bool:
    within_memory = used + need <= budget.memory
    within_count = budget.max_models == 0 or count + 1 <= budget.max_models
    return within_memory and within_count


def admit(
    need: int, residents: Sequence[Resident], budget: Budget, vram: VramNeed | None = None
) -> Verdict:
    """May a model needing ``need`` bytes (and ``vram``) load beside ``residents``, and
    at what cost?"""
    kept = [r for r in residents if r.protected]
    kept_memory = sum(r.need for r in kept)
    if need > budget.memory:
        return Verdict(refusal=f"needs {format_size(need)}, budget {format_size(budget.memory)}")
    if need > budget.memory - kept_memory:
        return Verdict(
            refusal=f"needs {format_size(need)}, budget {format_size(budget.memory)} of which "
            f"pinned or preloaded models hold {format_size(kept_memory)}"
        )
    if budget.max_models and len(kept) >= budget.max_models:
        return Verdict(
            refusal=f"max_loaded_models={budget.max_models} is taken by pinned or preloaded models"
        )
    victims = evict_for(need, residents, budget)
    for_ram = tuple(v.name for v in victims)
    devices: tuple[int, ...] = ()
    if vram:
        placed = place_on_gpus(vram, residents, budget, {v.name for v in victims})
        if isinstance(placed, str):
            return Verdict(refusal=placed)
        devices, more = placed
        victims += [r for r in more if r not in victims]
    return Verdict(
        evict=tuple(v.name for v in victims if not v.busy),
        wait_for=tuple(v.name for v in victims if v.busy),
        devices=devices,
        for_ram=for_ram,
    )


def place_on_gpus(
    vram: VramNeed, residents: Sequence[Resident], budget: Budget, leaving: set[str]
) -> tuple[tuple[int, ...], list[Resident]] | str:
    """The devices for a model needing ``vram`` and who must go for it there, or why
    it cannot go anywhere. ``leaving``: residents already going (their memory counts
    as free)."""
    if not budget.gpus:
        return f"needs {format_size(vram.bytes or 0)} of GPU memory, and no GPU was found"
    if vram.devices > len(budget.gpus):
        return f"spans {vram.devices} GPUs, and {len(budget.gpus)} were found"
    options: list[tuple[tuple[int, int, int], int, list[Resident]]] = []
    reasons = []
    for index, gpu in sorted(budget.gpus.items()):
        if vram.only and index not in vram.only:
            continue
        need = vram.on(gpu)
        holders = [r for r in residents if index in r.gpus and r.name not in leaving]
        kept = sum(r.vram_per_device for r in holders if r.protected)
        if need > gpu.budget - kept:
            reasons.append(f"GPU {index} has {format_size(max(0, gpu.budget - kept))}")
            continue
        free = gpu.budget - sum(r.vram_per_device for r in holders)
        victims: list[Resident] = []
        for r in sorted(
            (r for r in holders if not r.protected), key=lambda r: (r.busy, r.last_used)
        ):
            if free >= need:
                break
            victims.append(r)
            free += r.vram_per_device
        # Waiting for memory already on its way back costs nothing; then idle victims
        # before busy ones, fewer before more, and the most room left.
        staying = [v for v in victims if not v.leaving]
        cost = (sum(1 for v in staying if v.busy), len(staying), -(free - need))
        options.append((cost, index, victims))
    if len(options) < vram.devices:
        largest = max(vram.on(gpu) for gpu in budget.gpus.values())
        return f"needs {format_size(largest)} of GPU memory ({'; '.join(reasons)})"
    chosen = sorted(options)[: vram.devices]
    victims = [v for _, _, vs in chosen for v in vs]
    return tuple(sorted(index for _, index, _ in chosen)), victims


def evict_for(need: int, residents: Sequence[Resident], budget: Budget) -> list[Resident]:
    """The residents that must go for ``need`` to fit: idle LRU first, busy ones last."""
    used = sum(r.need for r in residents)
    count = len(residents)
    victims: list[Resident] = []
    candidates = sorted(
        (r for r in residents if not r.protected), key=lambda r: (r.busy, r.last_used)
    )
    for resident in candidates:
        if fits(used, count, need, budget):
            break
        victims.append(resident)
        used -= resident.need
        count -= 1
    return victims
