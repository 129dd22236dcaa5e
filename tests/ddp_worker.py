"""The worker processes of tests/ops/test_ddp.py (a module the spawned children can import)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastgan.ops import Denoiser, DenoiserLoss, _dispatch, js_penalty, penalty_jvp
from helpers import auto_rules_as_on_cuda

# "auto_as_on_cuda": "auto" choosing as on CUDA (jvp, after checking it against the double backward on the first
# batch), where on CPU it takes the double backward for this D under DDP
MODES = ("double_backward", "jvp", "auto", "auto_as_on_cuda")


def make_d():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 32), nn.LeakyReLU(0.2), nn.Linear(32, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))


def batches():
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g)


def loss(D, xr, xf, mode):
    pen, lr, lf = js_penalty(D, xr, xf, mode=mode)
    return F.softplus(-lr).mean() + F.softplus(lf).mean() + 0.05 * pen


def denoiser_batch():
    g = torch.Generator().manual_seed(2)
    return torch.randn(32, 8, generator=g), torch.randn(32, 8, generator=g)  # features, noise


def make_denoiser():
    torch.manual_seed(3)
    return Denoiser(8, 16, depth=2)


def worker(rank, world, port, out):
    """Two SGD steps per mode on this rank's half of the batch; puts (rank, {mode: parameters as lists, "mlp":
    what mode="mlp" said}) on `out`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        xr, xf = batches()
        result = {}
        for mode in MODES:
            if mode == "auto_as_on_cuda":
                for name, value in auto_rules_as_on_cuda().items():
                    setattr(penalty_jvp, name, value)
            before = dict(_dispatch.counts)
            D = nn.parallel.DistributedDataParallel(make_d())
            opt = torch.optim.SGD(D.parameters(), lr=0.1)
            for _ in range(2):  # a second iteration: DDP checks that the first one's reduction finished
                opt.zero_grad()
                loss(D, xr[rank::world], xf[rank::world], mode.removesuffix("_as_on_cuda")).backward()
                opt.step()
            result[mode] = [p.detach().tolist() for p in D.parameters()]
            result[mode + " ran"] = sorted(m for (op, m), n in _dispatch.counts.items()
                                          if op == "gradient_penalty" and n > before.get((op, m), 0))
        h, noise = denoiser_batch()
        den = make_denoiser()
        ddp = nn.parallel.DistributedDataParallel(DenoiserLoss(den), broadcast_buffers=False)
        opt = torch.optim.SGD(den.parameters(), lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            ddp(h[rank::world], noise[rank::world]).backward()
            opt.step()
        result["denoiser"] = [p.detach().tolist() for p in den.parameters()]
        try:
            js_penalty(nn.parallel.DistributedDataParallel(make_d()), xr, xf, mode="mlp")
            result["mlp"] = "ran"
        except ValueError as e:
            result["mlp"] = str(e)
        out.put((rank, result))
    finally:
        dist.destroy_process_group()


def make_bn_d():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16), nn.LeakyReLU(0.2), nn.Linear(16, 1))


def edge_worker(rank, world, port, out):
    """DDP options the penalty refuses or routes, and "auto" (choosing as on CUDA) whose one-time jvp check fails on
    rank 1 only; puts ((rank, "options"), {case: what happened}), then ((rank, "diverging"), ...) on `out`."""
    import warnings

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        xr, xf = batches()
        xr, xf = xr[rank::world], xf[rank::world]
        result = {}
        for name, kw, mode in (("static_graph", {"static_graph": True}, "double_backward"),
                               ("find_unused jvp", {"find_unused_parameters": True}, "jvp")):
            D = nn.parallel.DistributedDataParallel(make_d(), **kw)
            try:
                loss(D, xr, xf, mode).backward()
                result[name] = "ran"
            except (ValueError, NotImplementedError) as e:
                result[name] = str(e)
        for name, value in auto_rules_as_on_cuda().items():
            setattr(penalty_jvp, name, value)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            before = dict(_dispatch.counts)
            D = nn.parallel.DistributedDataParallel(make_d(), find_unused_parameters=True)
            loss(D, xr, xf, "auto").backward()
        result["find_unused auto ran"] = sorted(m for (op, m), n in _dispatch.counts.items()
                                                if op == "gradient_penalty" and n > before.get((op, m), 0))
        result["find_unused auto warned"] = [str(w.message) for w in caught if "jvp path" in str(w.message)]
        result["find_unused auto grads"] = [p.grad.tolist() for p in D.parameters()]
        out.put(((rank, "options"), result))
        result = {}
        try:  # torch 2.4: DDP's buffer broadcast in the fake batch's forward bumps the version of the BatchNorm
            # statistics the real batch's graph saved, and a plain double backward fails (a torch limit, not auto's)
            loss(nn.parallel.DistributedDataParallel(make_bn_d()), xr, xf, "double_backward").backward()
        except RuntimeError as e:
            if "modified by an inplace operation" not in str(e):
                raise
            out.put(((rank, "diverging"), {"unsupported": str(e).splitlines()[0][:200]}))
            return
        if rank == 1:  # this rank's check fails (as a float32/TF32 comparison near the tolerance may on its batch)
            penalty_jvp._RTOL = {torch.float64: -1.0, torch.float32: -1.0}
        before = dict(_dispatch.counts)
        D = nn.parallel.DistributedDataParallel(make_bn_d())  # buffers, broadcast in each forward
        opt = torch.optim.SGD(D.parameters(), lr=0.1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(2):
                opt.zero_grad()
                loss(D, xr, xf, "auto").backward()
                opt.step()
        result["diverging check ran"] = sorted(m for (op, m), n in _dispatch.counts.items()
                                               if op == "gradient_penalty" and n > before.get((op, m), 0))
        result["diverging check"] = [p.detach().tolist() for p in D.parameters()]
        out.put(((rank, "diverging"), result))
    finally:
        dist.destroy_process_group()
