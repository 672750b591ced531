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
  the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from corral.units import format_size


@dataclass(frozen=True)
class Resident:
    """A model holding (or about to hold) memory, as the policy sees it."""

    name: str
    need: int  # bytes accounted: the estimate, or the measured size if larger
    busy: bool  # serving, queued, loading or stopping: not evictable right now
    last_used: float
    protected: bool = False  # pinned or preloaded


@dataclass(frozen=True)
class Budget:
    memory: int
    max_models: int = 0  # 0 = no limit


@dataclass(frozen=True)
class Verdict:
    evict: tuple[str, ...] = ()  # idle models to stop now
    wait_for: tuple[str, ...] = ()  # busy models that must drain and stop first
    refusal: str | None = None  # can never fit: why, with numbers

    @property
    def load_now(self) -> bool:
        return self.refusal is None and not self.evict and not self.wait_for


def fits(used: int, count: int, need: int, budget: Budget) -> bool:
    within_memory = used + need <= budget.memory
    within_count = budget.max_models == 0 or count + 1 <= budget.max_models
    return within_memory and within_count


def admit(need: int, residents: Sequence[Resident], budget: Budget) -> Verdict:
    """May a model needing ``need`` bytes load beside ``residents``, and at what cost?"""
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
    return Verdict(
        evict=tuple(v.name for v in victims if not v.busy),
        wait_for=tuple(v.name for v in victims if v.busy),
    )


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
