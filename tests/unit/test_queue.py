from corral.scheduler.queue import FairQueue, Priority, Ticket


def drain(q: FairQueue) -> list[str]:
    out = []
    while (t := q.pop()) is not None:
        out.append(f"{t.key}{t.id}")
    return out


def test_fifo_within_a_key() -> None:
    q = FairQueue()
    tickets = [Ticket("m", key="a", id=i) for i in range(3)]
    for t in tickets:
        q.push(t)
    assert len(q) == 3 and q.peek() is tickets[0]
    assert drain(q) == ["a0", "a1", "a2"] and len(q) == 0


def test_keys_take_turns() -> None:
    q = FairQueue()
    for i in range(4):
        q.push(Ticket("m", key="greedy", id=i))
    q.push(Ticket("m", key="polite", id=9))
    assert drain(q) == ["greedy0", "polite9", "greedy1", "greedy2", "greedy3"]


def test_interactive_before_batch() -> None:
    q = FairQueue()
    q.push(Ticket("m", priority=Priority.BATCH, key="b", id=1))
    q.push(Ticket("m", priority=Priority.BATCH, key="b", id=2))
    q.push(Ticket("m", priority=Priority.INTERACTIVE, key="i", id=3))
    assert drain(q) == ["i3", "b1", "b2"]


def test_remove_and_iterate() -> None:
    q = FairQueue()
    a, b, c = (Ticket("m", key=k, id=i) for i, k in enumerate("xyx"))
    for t in (a, b, c):
        q.push(t)
    assert q.remove(b) and not q.remove(b)
    assert list(q) == [a, c] and len(q) == 2


def test_take_keeps_keys_taking_turns_and_skips_ineligible() -> None:
    """What the scheduler dispatches with: two batches (keys) alternate slot by slot."""
    q = FairQueue()
    for i in range(3):
        q.push(Ticket("m", priority=Priority.BATCH, key="batch-a", id=i))
    for i in range(3, 6):
        q.push(Ticket("m", priority=Priority.BATCH, key="batch-b", id=i))
    taken = []
    while (t := q.take(lambda t: t.id != 1)) is not None:
        taken.append(t.id)
    assert taken == [0, 3, 2, 4, 5]
    assert len(q) == 1 and q.peek() is not None and q.peek().id == 1
