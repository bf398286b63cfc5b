"""The workers' request list: most wanted first, bounded, a repeated request moved to the front."""

from __future__ import annotations

import pytest

from realtime.session.wants import WantList


def test_most_wanted_first_and_the_oldest_dropped():
    w = WantList(3)
    w.want([1, 2])
    w.want([3, 4])  # newer requests go in front, in their own order
    assert len(w) == 3 and 2 not in w  # the oldest (2) fell off
    assert [w.pop() for _ in range(3)] == [3, 4, 1]
    with pytest.raises(IndexError):
        w.pop()


def test_a_repeated_request_moves_to_the_front_once_and_skips_are_left_out():
    w = WantList(5)
    w.want([7, 8, 9])
    w.want([9, 5], skip=lambda i: i == 5)
    assert [w.pop() for _ in range(len(w))] == [9, 7, 8]
    w.want([1, 2])
    assert w.discard(1) and not w.discard(1)
    assert w.pop() == 2 and len(w) == 0
