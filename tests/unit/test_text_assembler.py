from corral.engines.text import TextAssembler


def feed_all(assembler: TextAssembler, pieces: list[bytes]) -> list[str]:
    out = [assembler.feed(p) for p in pieces]
    out.append(assembler.finish())
    return out


def test_plain_ascii_passes_through_immediately() -> None:
    a = TextAssembler()
    assert a.feed(b"Hello") == "Hello"
    assert a.feed(b" world") == " world"
    assert a.finish() == ""


def test_incomplete_utf8_is_held_until_complete() -> None:
    euro = "€".encode()  # 3 bytes
    a = TextAssembler()
    assert a.feed(euro[:1]) == ""
    assert a.feed(euro[1:2]) == ""
    assert a.feed(euro[2:] + b"!") == "€!"


def test_invalid_bytes_become_replacement_characters() -> None:
    a = TextAssembler()
    assert a.feed(b"\xff") == "\ufffd"
    assert a.feed(b"ok") == "ok"


def test_truncated_sequence_at_end_is_flushed_as_replacement() -> None:
    a = TextAssembler()
    assert a.feed("é".encode()[:1]) == ""
    assert a.finish() == "\ufffd"


def test_stop_string_inside_one_piece_cuts_text() -> None:
    a = TextAssembler(stop=["END"])
    assert a.feed(b"abc END def") == "abc "
    assert a.stopped
    assert a.feed(b"more") == ""
    assert a.finish() == ""


def test_stop_string_split_across_pieces_is_never_sent() -> None:
    a = TextAssembler(stop=["<|end|>"])
    out = feed_all(a, [b"answer <|", b"en", b"d|> tail"])
    assert "".join(out) == "answer "
    assert a.stopped


def test_partial_match_that_fails_is_released() -> None:
    a = TextAssembler(stop=["STOP"])
    assert a.feed(b"ST") == ""
    assert a.feed(b"AR") == "STAR"
    assert not a.stopped


def test_held_partial_match_is_released_at_finish() -> None:
    a = TextAssembler(stop=["STOP"])
    assert a.feed(b"go ST") == "go "
    assert a.finish() == "ST"


def test_earliest_of_several_stops_wins() -> None:
    a = TextAssembler(stop=["b", "xyz", "a"])
    assert a.matched is None
    assert a.feed(b"123a45b") == "123"
    assert a.matched == "a"  # which one, for vLLM's stop_reason and Anthropic's stop_sequence


def test_multibyte_stop_string_across_broken_bytes() -> None:
    stop = "→"
    raw = ("x" + stop + "y").encode()
    a = TextAssembler(stop=[stop])
    out = feed_all(a, [raw[i : i + 1] for i in range(len(raw))])
    assert "".join(out) == "x"
