"""fastgan.ops._locks.ForkSafeLock: the module locks (noise draws, default noise states, jvp replays, interpreted
Triton launches) are fresh in a forked child, so a lock another thread held at the fork does not hang it."""
import os
import threading

import pytest

from fastgan.ops import _dispatch, noise, noise_state, penalty_jvp
from fastgan.ops._locks import ForkSafeLock

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@pytest.mark.parametrize("lock", [noise._CPU_DRAW_LOCK, noise_state._default_lock, penalty_jvp._REPLAY_LOCK,
                                  _dispatch._INTERPRETER_LOCK, ForkSafeLock()],
                         ids=["noise-draw", "default-state", "jvp-replay", "interpreter", "new"])
def test_a_lock_held_by_another_thread_at_a_fork_is_free_in_the_child(lock):
    held, release = threading.Event(), threading.Event()

    def hold():
        with lock:
            held.set()
            release.wait()

    t = threading.Thread(target=hold)
    t.start()
    held.wait()
    try:
        assert not lock.plain.acquire(blocking=False)  # `with lock.plain` (the noise draw's) excludes `with lock`
        pid = os.fork()
        if pid == 0:  # the child: exit 0 if the lock can be taken at once
            ok = lock.plain.acquire(timeout=5)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        t.join()
    assert os.WEXITSTATUS(status) == 0
    assert lock._lock.acquire(timeout=5)  # the parent's, released by its thread
    lock._lock.release()



@pytest.mark.parametrize("factory", [threading.Lock, threading.RLock], ids=["Lock", "RLock"])
def test_a_block_that_forks_leaves_its_own_lock_in_the_child(factory):
    """The child of a fork inside the block gets a fresh lock, but its `with` must release the one it entered (a
    first version released the fresh one: "cannot release un-acquired lock")."""
    lock = ForkSafeLock(factory)
    with lock:
        pid = os.fork()
        if pid == 0:
            try:
                lock.__exit__(None, None, None)  # the child leaves the block...
                with lock:  # ...and takes the renewed lock
                    pass
            except BaseException:  # noqa: BLE001 - reported through the exit status
                os._exit(1)
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert lock._lock.acquire(timeout=5)  # the parent released its own
    lock._lock.release()
