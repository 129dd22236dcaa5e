"""The ops called from several Python threads, and the default noise state in forked DataLoader
workers. The CPU kernels run with the GIL released, so these races were real: threads drawing one
state got the same noise, the first draws from several threads made several default states, and concurrent jvp
penalties failed inside torch's one-per-process dual level."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch
from torch import nn

import fastgan.ops.noise_state as noise_state
from fastgan.ops import NoiseState, default_noise_state, gradient_penalty, noisy_clean_batch
from fastgan.ops.noise import philox_normal

THREADS = 8


def _in_threads(fn, n=THREADS):
    """fn(i) in n threads started together; their results in order, or the first error raised again."""
    barrier = threading.Barrier(n)
    out, errors = [None] * n, []

    def run(i):
        try:
            barrier.wait()
            out[i] = fn(i)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def _counters(x) -> int:
    return (x.numel() + 3) // 4  # Philox counters one draw of x's size uses (4 normals each)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("shared", ["default", "explicit"])
def test_threads_drawing_from_one_state_get_distinct_noise(monkeypatch, backend, shared):
    monkeypatch.setattr(noise_state, "_default_states", {})
    x = torch.zeros(256, 256)
    state = NoiseState(3) if shared == "explicit" else None
    calls = 4
    draws = _in_threads(lambda i: [noisy_clean_batch(x, None, 1.0, state=state, backend=backend)[0][256:]
                                   for _ in range(calls)])
    flat = [d for per_thread in draws for d in per_thread]
    keys = {d[:2].numpy().tobytes() for d in flat}
    assert len(keys) == len(flat), f"{len(flat) - len(keys)} of {len(flat)} draws repeated another's noise"
    st = state if state is not None else default_noise_state("cpu")
    assert st.offset == THREADS * calls * _counters(x)


def test_philox_normal_and_draws_from_threads_share_one_offset():
    """philox_normal (the stream's reference reader) advances the offset under the CPU draw's lock too."""
    state, x = NoiseState(9), torch.zeros(64, 256)

    def work(i):
        for _ in range(20 if i % 2 else 200):
            if i % 2:
                noisy_clean_batch(x, None, 1.0, state=state, backend="cpu")
            else:
                philox_normal(state, 4)

    _in_threads(work, n=4)
    assert state.offset == 2 * 20 * _counters(x) + 2 * 200 * 1


def test_first_draws_from_threads_share_one_default_state(monkeypatch):
    """Each round: a fresh default state, first used by 8 threads at once; one state serves them all."""
    x = torch.zeros(64, 32)
    for _ in range(5):
        monkeypatch.setattr(noise_state, "_default_states", {})
        torch.manual_seed(0)
        states = _in_threads(lambda i: (noisy_clean_batch(x, None, 1.0, backend="cpu"), default_noise_state("cpu"))[1])
        assert all(s is states[0] for s in states)
        assert states[0].offset == THREADS * _counters(x)


class _NoisyItems(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return noisy_clean_batch(torch.zeros(1, 16), None, 1.0, backend="cpu")[0][1]


def test_forked_dataloader_workers_draw_different_noise(monkeypatch):
    """The workers inherit the parent's default state: a forked child seeds its own on first use, from torch's
    generator, which the DataLoader seeds in each worker."""
    monkeypatch.setattr(noise_state, "_default_states", {})
    noisy_clean_batch(torch.zeros(1, 16), None, 1.0)  # the parent's state exists before the fork
    loader = torch.utils.data.DataLoader(_NoisyItems(), batch_size=1, num_workers=2,
                                         multiprocessing_context="fork")
    items = [b[0] for b in loader]
    assert len({t.numpy().tobytes() for t in items}) == len(items)


def _mlp_d():
    return nn.Sequential(nn.Linear(6, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))


def test_jvp_penalties_in_threads_match_one_thread():
    torch.manual_seed(0)
    Ds = [_mlp_d() for _ in range(4)]
    xs = [torch.randn(16, 6) for _ in range(4)]

    def grads(i):
        Ds[i].zero_grad()
        pen, _ = gradient_penalty(Ds[i], xs[i], mode="jvp")
        pen.backward()
        return pen.detach(), [p.grad for p in list(Ds[i].parameters())[:-1]]  # the last bias: no penalty gradient

    alone = [grads(i) for i in range(4)]
    for _ in range(3):
        together = _in_threads(grads, n=4)
        for (p1, g1), (p2, g2) in zip(alone, together):
            assert torch.equal(p1, p2) and all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_jvp_still_replays_dropout_masks():
    torch.manual_seed(1)
    D = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))
    x = torch.randn(16, 6)
    state = torch.get_rng_state()
    pen, _ = gradient_penalty(D, x, mode="jvp")
    params = list(D.parameters())[:-1]  # the last bias has no penalty gradient
    g = torch.autograd.grad(pen, params)
    torch.set_rng_state(state)
    ref, _ = gradient_penalty(D, x, mode="double_backward")
    want = torch.autograd.grad(ref, params)
    torch.testing.assert_close(pen, ref)
    for a, b in zip(g, want):
        torch.testing.assert_close(a, b)


@pytest.mark.triton
def test_triton_interpreter_launches_from_threads_match_one_thread():
    """Triton's interpreter swaps triton.language's functions around each launch: two threads' launches interleaved
    failed with "Did you forget to add @triton.jit ?" (in each of three runs of two threads) until on_device locked
    them. Each thread trains its own float64 Denoiser on the triton backend (GEMM, BatchNorm and loss kernels)."""
    from fastgan.ops import Denoiser

    g = torch.Generator().manual_seed(0)
    hs = [torch.randn(4, 4, generator=g, dtype=torch.float64) for _ in range(3)]

    def make(i):  # in the calling thread: the global generator initialises the layers
        torch.manual_seed(i)
        return Denoiser(4, 4, depth=1, backend="triton", dtype=torch.float64)

    dens = [make(i) for i in range(3)]

    def work(i, den=None):
        den = dens[i] if den is None else den
        out = []
        for h in hs:
            loss = den.loss(h, h * 0.5)
            out += [loss.detach(), *torch.autograd.grad(loss, list(den.parameters())),
                    den.generator_loss(h).detach()]
        return out

    alone = [work(i, make(i)) for i in range(3)]
    for got, want in zip(_in_threads(work, 3), alone):
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_set_state_and_manual_seed_while_other_threads_draw():
    """A CPU draw reads the seed and writes the offset with the GIL released: a set_state or manual_seed between
    the two left the new seed with the old stream's offset (184 of 300 resets torn in an audit, 2026-12-06). Each
    reset now waits for the draw in flight: every state read back is the reset's plus whole draws."""
    import time

    m, f = 256, 256
    per_draw = (m * f + 3) // 4  # counters a draw of m * f normals takes
    st, x, stop, errors = NoiseState(1), torch.zeros(m, f), threading.Event(), []

    def drawer():
        try:
            while not stop.is_set():
                noisy_clean_batch(None, x, 1.0, state=st, backend="cpu")
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=drawer) for _ in range(2)]
    for t in threads:
        t.start()
    bases, torn = {}, []
    try:
        for k in range(60):
            seed, base = 1000 + k, (10**9 + k * 10**6 if k % 2 else 0)
            st.set_state(torch.tensor([seed, base, 0])) if k % 2 else st.manual_seed(seed)
            bases[seed] = base
            time.sleep(0.002)  # not a timing: the drawers run meanwhile, some across the next reset
            s, off, ticket = st.get_state().tolist()
            if ticket != 0 or s not in bases or off < bases[s] or (off - bases[s]) % per_draw:
                torn.append((seed, base, s, off))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors and not torn, (errors, torn[:3])


_FRESH_THREAD_SCRIPT = r"""
import os, sys, threading, torch
import fastgan.ops as ops
torch.set_num_threads(1)
r, f = torch.randn(400000), torch.randn(400000)
def tasks():
    return len(os.listdir("/proc/self/task"))
out = {}
def work():
    before = tasks()
    ops.nt_losses(r, f, 0.5, backend="cpu")  # large enough for its parallel loop
    out["new"] = tasks() - before
t = threading.Thread(target=work)
t.start()
t.join()
print(out["new"])
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts OS threads in /proc")
def test_a_fresh_thread_runs_the_kernels_with_torchs_thread_count(tmp_path):
    """OpenMP's count is per OS thread: a fresh thread's first team took OMP_NUM_THREADS (4 here), not
    torch.set_num_threads(1), when one of our kernels was its first parallel op (3 OpenMP workers started)."""
    from fastgan import _ext

    if not getattr(_ext.C(), "openmp", False):
        pytest.skip("fastgan._C was built without OpenMP")
    env = dict(os.environ, OMP_NUM_THREADS="4")
    # cwd: not the checkout, whose unbuilt fastgan/ `python -c` would import first under a non-editable install
    res = subprocess.run([sys.executable, "-c", _FRESH_THREAD_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == "0", f"OpenMP workers started in the fresh thread: {res.stdout}"
