"""The penalty ops inside a user's DistributedDataParallel training (two CPU processes, gloo): each rank takes half
the batch, and after DDP averages the gradients every rank holds the parameters of one process stepping on the
mean of both halves' losses with the straightforward double backward; mode="mlp" (the closed form, which never
runs the wrapper's forward) says why it cannot run under DDP. The fused denoiser's loss, wrapped as DDP(DenoiserLoss(den)), likewise. The workers
are in tests/ddp_worker.py."""
from __future__ import annotations

import queue
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

if not dist.is_available():
    pytest.skip("this torch has no torch.distributed", allow_module_level=True)

import ddp_worker as W  # noqa: E402


def _one_process(module, half_loss):
    """Two SGD steps of one process on the mean of the two half-batch losses (what DDP's averaging computes)."""
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        (0.5 * sum(half_loss(r) for r in range(2))).backward()
        opt.step()
    return [p.detach() for p in module.parameters()]


def _reference():
    (xr, xf), D = W.batches(), W.make_d()
    return _one_process(D, lambda r: W.loss(D, xr[r::2], xf[r::2], "double_backward"))


def _denoiser_reference():
    """The fused denoiser's loss, each half of the batch with its own BatchNorm statistics as on its rank."""
    (h, noise), den = W.denoiser_batch(), W.make_denoiser()
    return _one_process(den, lambda r: den.loss(h[r::2], noise[r::2]))


def test_penalty_modes_under_ddp():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=W.worker, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = {}
    try:
        while len(results) < len(procs):
            try:
                rank, result = out.get(timeout=5)
                results[rank] = result
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                assert not dead, f"a DDP worker exited with {dead} (its traceback is on stderr)"
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    ref = _reference()
    den_ref = _denoiser_reference()
    for rank in (0, 1):
        for mode in W.MODES:
            for got, want in zip(results[rank][mode], ref):
                torch.testing.assert_close(torch.tensor(got), want, rtol=1e-5, atol=1e-6,
                                           msg=f"rank {rank}, mode {mode}")
        assert results[rank]["jvp ran"] == ["jvp"] and results[rank]["auto ran"] == ["double_backward"]
        assert results[rank]["auto_as_on_cuda ran"] == ["jvp"]
        assert "DistributedDataParallel" in results[rank]["mlp"] and "mode='jvp'" in results[rank]["mlp"]
        for got, want in zip(results[rank]["denoiser"], den_ref):
            torch.testing.assert_close(torch.tensor(got), want, rtol=1e-5, atol=1e-6, msg=f"rank {rank}, denoiser")


def _run_workers(target, messages, deadline=90):
    """{key: result} of `target` in two spawned processes, each putting `messages` (key, result) pairs on its queue;
    an AssertionError rather than a wait past `deadline` seconds (ranks running different collectives hang), with
    what arrived until then."""
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results, start = {}, time.monotonic()
    try:
        while len(results) < messages * len(procs):
            try:
                key, result = out.get(timeout=5)
                results[key] = result
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() - start > deadline:
                    results["failed"] = f"a DDP worker exited with {dead}" if dead else "the DDP workers hung"
                    break
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    return results


def test_penalty_ddp_options_and_a_check_failing_on_one_rank():
    """static_graph=True (DDP then averages wrong gradients after torch.autograd.grad through its forward, in every
    mode) is refused saying so; find_unused_parameters=True (its _DDPSink has no forward-mode rule) makes "jvp" say
    so and "auto" take the double backward without a warning; and "auto"'s one-time jvp check failing on one rank
    only makes every rank take the double backward (the ranks ran different numbers of forwards, whose buffer
    broadcasts then hung, before)."""
    results = _run_workers(W.edge_worker, messages=2)
    (xr, xf), D = W.batches(), W.make_d()
    (0.5 * sum(W.loss(D, xr[r::2], xf[r::2], "double_backward") for r in range(2))).backward()
    for rank in (0, 1):
        got = results.get((rank, "options"))
        assert got is not None, results.get("failed")
        assert "static_graph=True" in got["static_graph"] and "static_graph=False" in got["static_graph"]
        assert "find_unused_parameters=True" in got["find_unused jvp"] and "_DDPSink" in got["find_unused jvp"]
        assert got["find_unused auto ran"] == ["double_backward"] and got["find_unused auto warned"] == []
        for g, p in zip(got["find_unused auto grads"], D.parameters()):
            torch.testing.assert_close(torch.tensor(g), p.grad, rtol=1e-5, atol=1e-6)
    diverging = [results.get((rank, "diverging")) for rank in (0, 1)]
    assert None not in diverging, results.get("failed")
    if "unsupported" in diverging[0]:
        pytest.skip(f"this torch's DDP cannot run a BatchNorm D's plain double backward: {diverging[0]['unsupported']}")
    assert diverging[0]["diverging check ran"] == diverging[1]["diverging check ran"] == ["double_backward"]
    assert diverging[0]["diverging check"] == diverging[1]["diverging check"]
