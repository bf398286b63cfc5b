"""What the session's background workers should prepare next: a short list, most wanted first.

The clip loader (:mod:`.clips`) and the generator (:mod:`.generation`) both
get the policy's candidates every TR. The newest request goes to the front,
one asked for again moves there, and the list keeps at most ``limit``: the
candidates change every TR, and a stale request is not worth the CPU. It is
not thread-safe by itself; each worker guards it with its own lock.
"""

from __future__ import annotations

from collections import deque

__all__ = ["WantList"]


class WantList:
    """Library rows to prepare, most wanted first, at most ``limit`` of them."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self._q: deque[int] = deque()

    def want(self, indices, skip=lambda i: False) -> None:
        """Put ``indices`` in front, in their order (the first is the most wanted), except where ``skip(i)``."""
        for i in reversed([int(i) for i in indices]):
            if skip(i):
                continue
            self.discard(i)
            self._q.appendleft(i)
        while len(self._q) > self.limit:
            self._q.pop()

    def pop(self) -> int:
        """The most wanted row, removed."""
        return self._q.popleft()

    def discard(self, index: int) -> bool:
        """Remove ``index`` if it is wanted; whether it was."""
        if index in self._q:
            self._q.remove(index)
            return True
        return False

    def __contains__(self, index) -> bool:
        return index in self._q

    def __len__(self) -> int:
        return len(self._q)
