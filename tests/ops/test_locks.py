"""fastgan.ops._locks.ForkSafeLock: the module locks (noise draws, default noise states, jvp replays, interpreted
Triton launches, graph_check's checks) are fresh in a forked child, so a lock another thread held at the fork does
not hang it."""
import os
import threading

import pytest

from fastgan import graph_check
from fastgan.ops import _dispatch, noise, noise_state, penalty_jvp
from fastgan.ops._locks import ForkSafeLock

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _in_child(check) -> int:
    """The exit status of a forked child that runs check(): 0 where it returns true, 1 false, 2 where it raises."""
    pid = os.fork()
    if pid == 0:
        try:
            ok = check()
        except BaseException:  # noqa: BLE001 - reported through the exit status
            os._exit(2)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status)


@pytest.mark.parametrize("lock", [noise._CPU_DRAW_LOCK, noise_state._default_lock, penalty_jvp._REPLAY_LOCK,
                                  _dispatch._INTERPRETER_LOCK, graph_check._CHECKING, ForkSafeLock()],
                         ids=["noise-draw", "default-state", "jvp-replay", "interpreter", "graph-check", "new"])
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
        status = _in_child(lambda: lock.plain.acquire(timeout=5))  # the child can take the lock at once
    finally:
        release.set()
        t.join()
    assert status == 0
    assert lock._lock.acquire(timeout=5)  # the parent's, released by its thread
    lock._lock.release()



@pytest.mark.parametrize("factory", [threading.Lock, threading.RLock], ids=["Lock", "RLock"])
def test_a_block_that_forks_leaves_its_own_lock_in_the_child(factory):
    """The child of a fork inside the block gets a fresh lock, but its `with` must release the one it entered (a
    first version released the fresh one: "cannot release un-acquired lock")."""
    lock, pid = ForkSafeLock(factory), -1
    try:
        with lock:
            pid = os.fork()
        if pid == 0:  # the child left the block: it takes the renewed lock
            with lock:
                pass
    except BaseException:  # noqa: BLE001 - the child's, reported through the exit status
        if pid == 0:
            os._exit(1)
        raise
    if pid == 0:
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert lock._lock.acquire(timeout=5)  # the parent released its own
    lock._lock.release()


@pytest.mark.parametrize("factory", [threading.Lock, threading.RLock], ids=["Lock", "RLock"])
def test_an_interrupt_as_the_acquire_returns_leaves_the_lock_free(factory):
    """A KeyboardInterrupt raised where the acquire returns (Ctrl-C's handler runs at such points) inside a Python
    __enter__ left the lock held with no block to release it: the next draw hung (reproduced with SIGINTs sent to
    a loop of `with` blocks). A profile hook raises it here where any C call made for the `with` returns."""
    import sys

    lock = ForkSafeLock(factory)
    inner = lock._lock

    def interrupt(frame, event, arg):
        if event == "c_return" and getattr(arg, "__self__", None) is inner:
            raise KeyboardInterrupt

    sys.setprofile(interrupt)
    try:
        with lock:
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sys.setprofile(None)
    free = []
    t = threading.Thread(target=lambda: free.append(inner.acquire(timeout=5) and inner.release() is None))
    t.start()
    t.join()
    assert free == [True]


def test_a_jvp_dual_level_another_thread_had_open_at_a_fork_is_closed_in_the_child():
    """A thread inside a jvp penalty's dual pass at the fork: the child got the replay lock fresh but torch's dual
    level (one per process) still open, and its jvp penalties failed ("Nested forward mode AD is not supported at
    the moment") until the first one closed the level the parent's thread had left."""
    import torch
    from torch import nn
    from torch.autograd import forward_ad as fwAD

    from fastgan.ops import gradient_penalty

    inside, release = threading.Event(), threading.Event()

    class WaitsInTheDualPass(nn.Linear):
        def forward(self, x):
            if fwAD._current_level >= 0:
                inside.set()
                release.wait(timeout=20)
            return super().forward(x)

    torch.manual_seed(0)
    D, x = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)), torch.randn(4, 3)
    want = gradient_penalty(D, x, mode="double_backward")[0].detach()
    t = threading.Thread(target=lambda: gradient_penalty(WaitsInTheDualPass(3, 1), x, mode="jvp"))
    t.start()
    try:
        assert inside.wait(timeout=20)
        # the child's jvp penalties run (twice: the level is closed once) and are right
        status = _in_child(lambda: all(torch.allclose(gradient_penalty(D, x, mode="jvp")[0], want) for _ in range(2)))
    finally:
        release.set()
        t.join()
    assert status == 0
    assert gradient_penalty(D, x, mode="jvp")[0].allclose(want)  # the parent's level was closed by its thread


def test_a_child_forked_while_another_thread_is_inside_d_compiles():
    """A thread inside a penalty's call of D at the fork (Dynamo loaded: the call runs under torch.compile's
    process-wide force_eager stance, its entries counted): the child inherited the count and the stance, which no
    thread of its own would ever exit, so torch.compile'd code in the child never compiled (half of the children
    forked beside a thread looping js_penalty, an audit of forks, 2026-12-07)."""
    import torch
    import torch._dynamo  # loaded: the penalties set the stance around D's calls
    from torch import nn

    from fastgan.ops import compiled_d, gradient_penalty

    if compiled_d._stance_setter() is None:
        pytest.skip("this torch has no torch.compile stances")
    inside, release = threading.Event(), threading.Event()

    class WaitsInD(nn.Linear):
        def forward(self, x):
            inside.set()
            release.wait(timeout=20)
            return super().forward(x)

    def child_compiles():
        calls = []

        def backend(gm, inputs):
            calls.append(gm)
            return gm.forward

        f = torch.compile(lambda a: a * 2 + 1, backend=backend)
        return torch.equal(f(torch.ones(3)), torch.full((3,), 3.0)) and len(calls) == 1

    x = torch.randn(4, 3)
    t = threading.Thread(target=lambda: gradient_penalty(WaitsInD(3, 1), x))
    t.start()
    try:
        assert inside.wait(timeout=20)
        eval_frame = compiled_d._stance_setter()[0]
        assert eval_frame._stance.stance == "force_eager"  # the parent's thread is inside D
        status = _in_child(child_compiles)
    finally:
        release.set()
        t.join()
    assert status == 0
    assert compiled_d._Stance._depth == 0 and eval_frame._stance.stance != "force_eager"  # put back in the parent
