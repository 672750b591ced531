import math

import pytest

from corral.units import format_size, parse_keep_alive, parse_size


def test_sizes() -> None:
    assert parse_size("8GiB") == 8 << 30
    assert parse_size("512MB") == 512_000_000
    assert parse_size("1.5 GiB") == int(1.5 * (1 << 30))
    assert parse_size("42") == 42
    with pytest.raises(ValueError):
        parse_size("lots")
    assert format_size(9.2 * (1 << 30)) == "9.2 GiB"
    assert format_size(5 << 20) == "5 MiB"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("10s", 10.0),
        ("250ms", 0.25),
        ("0", 0.0),
        (30, 30.0),
        ("-1", None),
        (-1, None),
        ("-5m", None),
    ],
)
def test_keep_alive(text: str | int, seconds: float | None) -> None:
    assert parse_keep_alive(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "5 minutes", "m5", True])
def test_bad_keep_alive(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_keep_alive(bad)  # type: ignore[arg-type]


def test_inf_is_not_a_keep_alive_input() -> None:
    assert parse_keep_alive(math.inf) == math.inf
