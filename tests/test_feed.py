"""The order blocks are handed out in: stripes that follow each worker's last block,
new stripes in the middle of the longest run left, every block exactly once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from unet_tiles.engine.feed import StripeOrder


def test_seeds_halve_the_longest_run_left() -> None:
    order = StripeOrder(16)
    assert [order.seed() for _ in range(4)] == [0, 8, 4, 12]
    assert order.left == 12


def test_a_stripe_follows_its_worker_until_it_meets_another() -> None:
    order = StripeOrder(10)
    assert [order.seed("a"), order.seed("b")] == [0, 5]
    assert [order.after(0, "a"), order.after(1, "a"), order.after(2, "a")] == [1, 2, 3]
    assert order.after(3, "a") == 4
    assert order.after(4, "a") is None  # 5 is b's
    assert order.after(5, "b") == 6


def test_a_worker_skips_the_blocks_it_holds_already() -> None:
    # Two blocks in flight per thread: a worker that finishes 0 while it holds 1 and 2
    # goes on with 3, which shares chunks with 2 in its cache.
    order = StripeOrder(6)
    assert order.seed("w") == 0
    assert [order.after(0, "w"), order.after(1, "w")] == [1, 2]
    assert order.after(0, "w") == 3
    assert order.after(0, "other") is None  # 1 is w's, not other's


def test_the_last_block_and_an_empty_plan() -> None:
    order = StripeOrder(1)
    assert order.seed() == 0
    assert order.seed() is None
    assert order.after(0, "w") is None
    assert StripeOrder(0).seed() is None


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 60), data=st.data())
def test_every_block_is_handed_out_once_whatever_the_workers_do(
        n: int, data: st.DataObject) -> None:
    order = StripeOrder(n)
    taken: list[int] = []
    last: dict[str, int] = {}
    while True:
        worker = data.draw(st.sampled_from(["a", "b", "c", None]))
        position = None
        if worker is not None and worker in last:
            position = order.after(last[worker], worker)
            if position is not None:
                assert position > last[worker]
        if position is None:
            position = order.seed(worker)
        if position is None:
            break
        taken.append(position)
        if worker is not None:
            last[worker] = position
        assert order.left == n - len(taken)
    assert sorted(taken) == list(range(n))


def test_first_takes_the_plan_order() -> None:
    order = StripeOrder(5)
    assert order.seed() == 0
    assert order.seed() == 3  # the middle of 1..4
    assert [order.first(), order.first(), order.first(), order.first()] == [1, 2, 4, None]
