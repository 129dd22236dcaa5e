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
