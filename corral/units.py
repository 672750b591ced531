"""Human units in settings and requests: sizes ("8GiB") and durations ("5m")."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "ki": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "mi": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "gi": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
    "ti": 1 << 40,
}
_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ms|d|h|m|s)")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

GiB = 1 << 30


def parse_size(text: str | int) -> int:
    """``"8GiB"`` -> 8589934592; ``"512MB"``; a bare number is bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 8GiB or 512MB)")
    number, unit = match.groups()
    return int(float(number) * _SIZE_FACTORS[(unit or "").lower()])


def format_size(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / (1 << 20):.0f} MiB"


def parse_keep_alive(value: str | float | int | None) -> float | None:
    """Ollama's keep_alive: seconds until unload; None = forever.

    Numbers are seconds; strings are Go-style durations ("5m", "1h30m", "10s");
    any negative value means keep forever; 0 unloads as soon as the model is idle.
    """
    if value is None:
        raise ValueError("keep_alive must not be null")
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"not a duration: {value!r} (try 5m, 30s, 1h or -1)") from None
            seconds = sum(float(n) * _DURATION_FACTORS[u] for n, u in parts)
    return None if seconds < 0 else seconds
