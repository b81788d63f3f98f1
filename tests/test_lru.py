"""The explorer's bounded memo (``causalvq.explore.lru.LRU``): what it keeps, what it drops, under threads."""

import threading

import pytest

from causalvq.explore.lru import LRU


def test_the_least_recently_used_entry_goes_first():
    memo: LRU[str, int] = LRU(2)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # "a" is now the most recently used: "b" goes when a third entry comes
    memo.put("c", 3)
    assert "b" not in memo and memo.get("a") == 1 and memo.get("c") == 3 and len(memo) == 2
    memo.put("a", 10)  # a new value for a kept key replaces it and marks it used
    memo.put("d", 4)
    assert memo.get("a") == 10 and "c" not in memo
    assert memo.get("missing") is None
    memo.clear()
    assert len(memo) == 0


def test_a_memo_must_keep_something():
    with pytest.raises(ValueError, match="size must be >= 1"):
        LRU(0)


def test_threads_never_push_it_past_its_size():
    memo: LRU[int, int] = LRU(50)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(2000):
                key = (seed * 7919 + i * 31) % 400
                memo.put(key, key)
                got = memo.get((key + 1) % 400)
                assert got is None or got == (key + 1) % 400  # a value is always its own key's
                assert len(memo) <= 50
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert len(memo) == 50
