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

    __slots__ = ("_factory", "_lock", "__weakref__")

    def __init__(self, factory=threading.Lock):
        self._factory = factory
        self._lock = factory()
        _LOCKS.add(self)

    # Properties, not methods: `with` looks both up before it enters, so a block runs the lock's own C __enter__
    # and __exit__. A Python __enter__ that a KeyboardInterrupt reached between its acquire and its return left the
    # lock held with no block to release it (the next draw hung; 1 of 2 interrupts in an audit of signals,
    # 2026-12-07); and the __exit__ is the lock's that the block entered, which a child forked inside the block
    # must release (a first version released the renewed one: "cannot release un-acquired lock").
    __enter__ = property(lambda self: self._lock.__enter__)
    __exit__ = property(lambda self: self._lock.__exit__)

    @property
    def plain(self):
        """The lock itself, for a `with` block in a hot path (it skips this class's two Python lookups; a child
        forked elsewhere reads its renewed lock here)."""
        return self._lock


_LOCKS: "weakref.WeakSet[ForkSafeLock]" = weakref.WeakSet()


def _renew_in_child() -> None:
    for lock in list(_LOCKS):
        lock._lock = lock._factory()


os.register_at_fork(after_in_child=_renew_in_child)
