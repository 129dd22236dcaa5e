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
        pid = os.fork()
        if pid == 0:  # the child: exit 0 if the lock can be taken at once
            ok = lock._lock.acquire(timeout=5)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        t.join()
    assert os.WEXITSTATUS(status) == 0
    assert lock._lock.acquire(timeout=5)  # the parent's, released by its thread
    lock._lock.release()
