"""Locks that a forked child gets fresh: a lock some other thread of the parent held at the fork would stay held in
the child (only the forking thread survives there), and its first use would hang (DataLoader workers fork)."""
from __future__ import annotations

import os
import threading
import weakref


class ThreadStack(threading.local):
    """A list per thread, there from the first read in every thread (torch.compile guards on the attribute's
    presence as on its contents: one made on first use would recompile a traced caller once)."""

    def __init__(self):
        self.stack = []


class ForkSafeLock:
    """threading.Lock (or `factory`'s lock) for `with` blocks, replaced by a new one in a forked child."""

    __slots__ = ("_factory", "_lock", "_held", "__weakref__")

    def __init__(self, factory=threading.Lock):
        self._factory = factory
        self._lock = factory()
        self._held = ThreadStack()  # the locks this thread entered: a block that forks leaves its own
        _LOCKS.add(self)

    def __enter__(self):
        lock = self._lock
        lock.acquire()
        self._held.stack.append(lock)
        return self

    def __exit__(self, *exc):
        # the lock this block entered, not self._lock: in a child forked inside the block that is a fresh one
        self._held.stack.pop().release()

    @property
    def plain(self):
        """The lock itself, for a `with` block that does not fork (its C __enter__/__exit__ save ~0.3 us against
        this class's; a child forked elsewhere reads its renewed lock here)."""
        return self._lock


_LOCKS: "weakref.WeakSet[ForkSafeLock]" = weakref.WeakSet()


def _renew_in_child() -> None:
    for lock in list(_LOCKS):
        lock._lock = lock._factory()


os.register_at_fork(after_in_child=_renew_in_child)
