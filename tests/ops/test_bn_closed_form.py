"""fastgan.ops.bn_closed_form: the fused BatchNorm passes of the penalty's closed form. The reference is checked
against autograd through BatchNorm's forward; every backend against the reference (float64 to 1e-12, float32
within 2x the float32 reference's own error against float64); bad inputs; the closed form runs these kernels."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.ops import bn_closed_form as K, gradient_penalty
from fastgan.reference import bn_closed_form as ref

from helpers import assert_close_to_oracle, backend_calls, backend_device, every_backend_params

SHAPES = [(64, 8), (6, 5, 7), (4, 3, 5, 6), (2, 3, 2, 3, 4), (2, 3, 20, 20), (5, 300, 2), (3, 700)]
BACKENDS = every_backend_params()
EPS = 1e-5


def _inputs(shape, gamma=True, dtype=torch.float64, device="cpu", seed=0, shift=2.0):
    g = torch.Generator().manual_seed(seed)
    C = shape[1]

    def r(*s, scale=1.0, shift=0.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale + shift).to(dtype=dtype, device=device)

    h = r(*shape, scale=3.0, shift=shift)
    return {"h": h, "t": r(*shape, shift=shift / 3.0), "rho": r(*shape), "lam": r(*shape),
            "gamma": r(C, scale=0.5, shift=1.0) if gamma else None}


def _chain(x, backend=None, impl=K):
    """stats -> centered -> vjp, as the closed form chains them."""
    xhat, rstd = impl.stats(x["h"], EPS) if impl is ref else impl.stats(x["h"], EPS, backend)
    args = (xhat, x["t"], rstd, x["gamma"])
    out, mt, q = impl.centered(*args) if impl is ref else impl.centered(*args, backend)
    vargs = (x["rho"], x["lam"], xhat, x["t"], rstd, x["gamma"], mt, q)
    dh, dgamma, dbeta = impl.vjp(*vargs) if impl is ref else impl.vjp(*vargs, backend)
    return {"xhat": xhat, "rstd": rstd, "out": out, "mt": mt, "q": q, "dh": dh, "dgamma": dgamma, "dbeta": dbeta}


# ---------------------------------------------------------------- the reference against autograd

def _xhat(h):
    dims = [0] + list(range(2, h.dim()))
    var, mean = torch.var_mean(h, dims, unbiased=False, keepdim=True)
    return (h - mean) / torch.sqrt(var + EPS)


def _per_channel(v, like):
    return 1.0 if v is None else v.reshape([1, -1] + [1] * (like.dim() - 2))


@pytest.mark.parametrize("shape", SHAPES[:5])
@pytest.mark.parametrize("gamma", [True, False])
def test_reference_is_batchnorm_calculus(shape, gamma):
    x = _inputs(shape, gamma)
    h = x["h"].clone().requires_grad_(True)
    gm = None if x["gamma"] is None else x["gamma"].clone().requires_grad_(True)
    # gamma * d xhat along t, by the double-vjp trick (reverse mode only): J t = d/du <J^T u, t>
    u = torch.zeros_like(h, requires_grad=True)
    (jtu,) = torch.autograd.grad(_xhat(h), h, u, create_graph=True)
    (dxhat,) = torch.autograd.grad(jtu, u, x["t"], create_graph=True)
    y = _per_channel(gm, h) * _xhat(h)
    F_ = (x["rho"] * y).sum() + (x["lam"] * _per_channel(gm, h) * dxhat).sum()
    wrt = [h] + ([gm] if gm is not None else [])
    auto = torch.autograd.grad(F_, wrt)

    got = _chain(x, impl=ref)
    torch.testing.assert_close(got["xhat"], _xhat(x["h"]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["out"], (_per_channel(x["gamma"], h) * dxhat).detach(), rtol=1e-10, atol=1e-10)
    # the centered map is also BatchNorm's backward (symmetric): gamma-scaled vjp of xhat on t
    (bwd,) = torch.autograd.grad(_xhat(h), h, x["t"])
    torch.testing.assert_close(got["out"], _per_channel(x["gamma"], h) * bwd, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got["dh"], auto[0], rtol=1e-9, atol=1e-9)
    if gamma:
        torch.testing.assert_close(got["dgamma"], auto[1], rtol=1e-9, atol=1e-9)
    else:
        assert got["dgamma"] is None
    torch.testing.assert_close(got["dbeta"], x["rho"].sum([0] + list(range(2, h.dim()))))


def test_reference_stats_match_batch_norm():
    x = _inputs((8, 4, 3, 3))
    torch.testing.assert_close(ref.stats(x["h"], EPS)[0], F.batch_norm(x["h"], None, None, training=True, eps=EPS))


# ---------------------------------------------------------------- backends against the reference

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gamma", [True, False])
def test_backend_matches_reference_float64(backend, shape, gamma):
    x = _inputs(shape, gamma, device=backend_device(backend))
    before = backend_calls(K.OP, backend)
    got, want = _chain(x, backend), _chain(x, impl=ref)
    assert backend_calls(K.OP, backend) == before + 3
    for k, w in want.items():
        if w is None:
            assert got[k] is None, k
        else:
            assert got[k].dtype == w.dtype and got[k].shape == w.shape, k
            torch.testing.assert_close(got[k], w, rtol=1e-11, atol=1e-11, msg=k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("shift", [2.0, 300.0], ids=["", "mean-100-std"])
def test_backend_float32_within_twice_reference_error(backend, shape, shift):
    """shift 300: channels whose mean is 100 std from 0; rstd * h - rstd * mean cancelled two such terms in float32
    (4-10x the reference's error), the shifted element passes subtract the mean first. The truth of each stage is
    float64 on its float32 inputs: rounding them is no kernel's error (against the unrounded inputs' truth, an H200's
    float32 torch.var_mean landed 4x nearer than the rounded inputs' exact rstd, and failed the exact kernel)."""
    dev = backend_device(backend)
    x32 = {k: None if v is None else v.float() for k, v in _inputs(shape, True, device=dev, shift=shift).items()}
    x64 = {k: None if v is None else v.double() for k, v in x32.items()}
    truth = _chain(x64, impl=ref)
    low = _chain(x32, impl=ref)
    got = _chain(x32, backend)
    # each stage on the float32 rounding of the float64 stages before it, so a stage's error is its own
    assert_close_to_oracle(got["xhat"], low["xhat"], truth["xhat"], name="xhat")
    assert_close_to_oracle(got["rstd"], low["rstd"], truth["rstd"], name="rstd")
    c32 = [truth["xhat"].float(), x32["t"], truth["rstd"].float(), x32["gamma"]]
    c_got, c_low = K.centered(*c32, backend=backend), ref.centered(*c32)
    c_truth = ref.centered(*(v.double() for v in c32))
    for i, name in enumerate(("out", "mt", "q")):
        assert_close_to_oracle(c_got[i], c_low[i], c_truth[i], name=name)
    v64 = (x64["rho"], x64["lam"], truth["xhat"], x64["t"], truth["rstd"], x64["gamma"], truth["mt"], truth["q"])
    v32 = [v.float() for v in v64]
    v_got, v_low, v_truth = K.vjp(*v32, backend=backend), ref.vjp(*v32), ref.vjp(*(v.double() for v in v32))
    for i, name in enumerate(("dh", "dgamma", "dbeta")):
        assert_close_to_oracle(v_got[i], v_low[i], v_truth[i], name=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_centring_subtracts_a_mean_float32_cannot_hold(backend):
    """Channels of values near 300 (h) and -200 (t) with std 0.01: the mean rounded to float32 alone errs by up to
    half an ulp of 300, 1.5e-5, times rstd ~95 in xhat (1.4e-3; t - mean(t) likewise in the tangent's output).
    Subtracted in two parts (bncf::split_shift) the centring rounds once. Against float64 on the same float32
    inputs; xhat = 0 for the tangent isolates its centring (q = 0)."""
    dev = backend_device(backend)
    g = torch.Generator().manual_seed(5)
    h = (300 + 0.01 * torch.randn(16, 6, 5, generator=g, dtype=torch.float64)).float().to(dev)
    t = (-200 + 0.01 * torch.randn(16, 6, 5, generator=g, dtype=torch.float64)).float().to(dev)
    xhat, rstd = K.stats(h, EPS, backend)
    want_xhat, want_rstd = ref.stats(h.double(), EPS)
    assert want_rstd.min() > 50  # the case: std 0.01
    torch.testing.assert_close(xhat.double(), want_xhat, rtol=0, atol=1e-5)
    zero = torch.zeros_like(t)
    out, mt, q = K.centered(zero, t, rstd, None, backend)
    want_out, _, _ = ref.centered(zero.double(), t.double(), rstd.double(), None)
    torch.testing.assert_close(out.double(), want_out, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mean", [1e5, 1e6])
@pytest.mark.parametrize("shape", [(4096, 3), (512, 128), (64, 32, 16)])
def test_rstd_of_channels_whose_mean_is_far_past_their_std(backend, mean, shape):
    """Channels of mean + N(0, 1): the cpu backend's centred pass subtracted the mean rounded to float32, so its sum
    of squares gained n (mean - float32(mean))^2, rstd off by 20x (1e5) to 6000x (1e6) the reference's error; then,
    with the mean in two parts, the mean itself was off (8 samples added in float32 before flushing into double):
    rstd 60-10^4 times the reference's error at (512, 128) and (64, 32, 16) for means of 1e5-3e6."""
    g = torch.Generator().manual_seed(0)
    h = (mean + torch.randn(*shape, generator=g, dtype=torch.float64)).float().to(backend_device(backend))
    got = K.stats(h, EPS, backend)[1]
    assert_close_to_oracle(got, ref.stats(h, EPS)[1], ref.stats(h.double(), EPS)[1], name="rstd")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mean", [1e5, 1e6])
def test_tangent_whose_mean_is_far_past_its_std(backend, mean):
    """A tangent t of mean + N(0, 1): q = mean(xhat t) cancels terms of size mean |xhat|, and out = scale (t -
    mean(t) - xhat q) centres t: every backend within twice the reference's error."""
    g = torch.Generator().manual_seed(1)
    xhat, rstd = (v.float() for v in ref.stats(torch.randn(4096, 3, generator=g, dtype=torch.float64), EPS))
    t = (mean + torch.randn(4096, 3, generator=g, dtype=torch.float64)).float()
    args = (xhat, t, rstd, None)
    got = K.centered(*(a if a is None else a.to(backend_device(backend)) for a in args), backend=backend)
    low, truth = ref.centered(*args), ref.centered(*(a if a is None else a.double() for a in args))
    for i, name in enumerate(("out", "mt", "q")):
        assert_close_to_oracle(got[i], low[i], truth[i], name=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rho_mean,lam_mean", [(1e4, 0.0), (1e5, 0.0), (0.0, 1e5)], ids=["rho-1e4", "rho-1e5", "lam-1e5"])
@pytest.mark.parametrize("seed", range(5))
def test_vjp_of_cotangents_whose_mean_is_far_past_their_std(backend, rho_mean, lam_mean, seed):
    """rho (or lam) of mean + N(0, 1), as when BatchNorm sits under the output Linear (rho ~ a W_out, nearly the same
    for every sample): the element pass added rstd g rho to a constant -rstd g mean(rho) (terms of size
    rstd g |mean(rho)| cancelling in float32), and the reductions rounded lam xhat to float32: dh up to 12x the
    oracle's error (an audit's reproducer, shape (256, 4), seeds 0-4). rho and lam are now centred like t, and the
    products formed in double."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    xhat, rstd = ref.stats(r(256, 4) * 2 + 1, EPS)
    t = r(256, 4)
    mt, q = ref.centered(xhat, t, rstd, None)[1:]
    v32 = [v.float() for v in (rho_mean + r(256, 4), lam_mean + r(256, 4), xhat, t, rstd, r(4) * 0.5 + 1, mt, q)]
    got = K.vjp(*(v.to(backend_device(backend)) for v in v32), backend=backend)
    low, truth = ref.vjp(*v32), ref.vjp(*(v.double() for v in v32))
    for i, name in enumerate(("dh", "dgamma", "dbeta")):
        assert_close_to_oracle(got[i], low[i], truth[i], name=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_infinite_mean_keeps_the_references_infinities(backend):
    """A channel whose mean is inf: the two-part shift's low part (inf - inf) is taken as 0, so x - inf stays -inf
    where the reference has it, not NaN everywhere (a review of split_shift)."""
    dev = backend_device(backend)
    t = torch.randn(4, 3, 1, generator=torch.Generator().manual_seed(2)).to(dev)
    t[1, 1, 0] = float("inf")
    xhat, rstd = torch.ones_like(t), torch.ones(3, device=dev)
    got, want = K.centered(xhat, t, rstd, None, backend)[0], ref.centered(xhat, t, rstd, None)[0]
    assert torch.isinf(want[:, 1]).sum() == 3
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.equal(torch.isinf(got), torch.isinf(want))


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_channels(backend):
    got = _chain(_inputs((3, 0, 4), True, device=backend_device(backend)), backend)
    assert got["dh"].shape == (3, 0, 4) and got["rstd"].shape == got["dgamma"].shape == (0,)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_run_the_float32_kernel(dtype):
    """Each stage of a half chain is the float32 kernel on upcast inputs, its outputs rounded once to the
    storage dtype: bit for bit (computing in the storage dtype is within any loose tolerance)."""
    x = {k: None if v is None else v.to(dtype) for k, v in _inputs((4, 3, 5), True).items()}
    before = backend_calls("bn_closed_form", "cpu")
    got = _chain(x, "cpu")
    assert backend_calls("bn_closed_form", "cpu") == before + 3

    def f32(*ts):
        return [None if t is None else t.float() for t in ts]

    def down(ts):
        return [t.to(dtype) for t in ts]
    xhat, rstd = down(K.stats(*f32(x["h"]), EPS, "cpu"))
    out, mt, q = down(K.centered(*f32(xhat, x["t"], rstd, x["gamma"]), "cpu"))
    dh, dgamma, dbeta = down(K.vjp(*f32(x["rho"], x["lam"], xhat, x["t"], rstd, x["gamma"], mt, q), "cpu"))
    want = {"xhat": xhat, "rstd": rstd, "out": out, "mt": mt, "q": q, "dh": dh, "dgamma": dgamma, "dbeta": dbeta}
    ref32 = _chain({k: None if v is None else v.float() for k, v in x.items()}, impl=ref)
    for k, w in want.items():
        assert got[k].dtype == dtype and torch.equal(got[k], w), k
        torch.testing.assert_close(got[k].float(), ref32[k], rtol=2e-2, atol=2e-2 * ref32[k].abs().max().item(),
                                   msg=k)


def test_opcheck():
    x = _inputs((4, 3, 5), True)
    c = _chain(x, impl=ref)
    for backend in ("cpu", "reference"):
        torch.library.opcheck(torch.ops.fastgan.bn_cf_stats.default, (x["h"], EPS, backend))
        torch.library.opcheck(torch.ops.fastgan.bn_cf_centered.default,
                              (c["xhat"], x["t"], c["rstd"], x["gamma"], backend))
        torch.library.opcheck(torch.ops.fastgan.bn_cf_vjp.default,
                              (x["rho"], x["lam"], c["xhat"], x["t"], c["rstd"], None, c["mt"], c["q"], backend))


# ---------------------------------------------------------------- bad inputs

def _bad_calls():
    x = _inputs((4, 3, 5), True, dtype=torch.float32)
    c = _chain(x, impl=ref)
    xh, t, rs, g = c["xhat"], x["t"], c["rstd"], x["gamma"]
    return [
        (lambda: K.stats([1.0], EPS), TypeError, "h must be a torch.Tensor"),
        (lambda: K.stats(torch.zeros(0, 3), EPS), ValueError, "h must be"),
        (lambda: K.stats(torch.zeros(4), EPS), ValueError, "h must be"),
        (lambda: K.stats(torch.zeros(4, 3, dtype=torch.int64), EPS), TypeError, "h must be a floating"),
        (lambda: K.centered(xh[:, :2], t, rs, g), ValueError, "xhat must have shape"),
        (lambda: K.centered(xh, t, rs[:2], g), ValueError, "rstd must have shape"),
        (lambda: K.centered(xh.double(), t, rs, g), TypeError, "xhat has dtype"),
        (lambda: K.centered(xh.to("meta"), t, rs, g), ValueError, "xhat is on meta"),
        (lambda: K.centered(xh.transpose(0, 2).contiguous().transpose(0, 2), t, rs, g), ValueError,
         "xhat must be contiguous"),
        (lambda: K.vjp(x["rho"], x["lam"], xh, t, rs, g, c["mt"], None), TypeError, "q must be a torch.Tensor"),
        (lambda: K.vjp(x["rho"].expand(4, 3, 5)[:, :, ::1].transpose(1, 2).contiguous().transpose(1, 2), x["lam"],
                       xh, t, rs, g, c["mt"], c["q"]), ValueError, "rho must be contiguous"),
        (lambda: K.stats(x["h"], EPS, backend="nope"), ValueError, "backend must be one of"),
    ]


@pytest.mark.parametrize("i", range(len(_bad_calls())))
def test_bad_inputs_name_the_argument(i):
    call, exc, match = _bad_calls()[i]
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------- inside the closed form

def _bn_d():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, 2, 1), nn.BatchNorm2d(6), nn.LeakyReLU(0.2), nn.Conv2d(6, 8, 3, 2, 1),
                         nn.BatchNorm2d(8, affine=False), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 2 * 2, 1)).double()


@pytest.mark.parametrize("backend", ["cpu", "reference", "triton"])
def test_closed_form_runs_the_fused_passes(backend):
    """mode="mlp" on a D with batch statistics: each BatchNorm layer runs stats and centered in the forward and
    centered and vjp in the backward, on the penalty's backend; its gradients are the double backward's."""
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    grads = {}
    for mode in ("mlp", "double_backward"):
        D = _bn_d()
        before = backend_calls(K.OP, backend)
        pen, logits = gradient_penalty(D, x, "js_real", mode=mode, backend=backend)
        (pen + logits.sum()).backward()
        calls = backend_calls(K.OP, backend) - before
        assert calls == (8 if mode == "mlp" else 0), (mode, calls)
        grads[mode] = [p.grad for p in D.parameters()]
    for a, b in zip(grads["mlp"], grads["double_backward"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- compiled for a GPU, without one

_COMPILE = r"""
import json, re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastgan.kernels import bn_closed_form as kb

out = {}
for kernel in ("_stats_kernel", "_centered_kernel", "_vjp_kernel"):
    fn = getattr(kb, kernel)
    consts = {"BLOCK": 1024} | ({} if kernel == "_stats_kernel" else {"HAS_GAMMA": True})
    for dtype in ("fp32", "fp64"):
        sig = {a: ("i32" if a in ("C", "S", "n") else "fp64" if a == "eps" else "constexpr" if a in consts
                   else "*" + dtype) for a in fn.arg_names}
        src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(c),): v for c, v in consts.items()})
        ck = triton.compile(src, target=GPUTarget("cuda", 90, 32))
        ptx = ck.asm["ptx"]
        out[kernel + "-" + dtype] = {"sm_90": ".target sm_90" in ptx, "cubin": len(ck.asm["cubin"]),
                                     "spills": bool(re.search(r"\bst\.local\b", ptx))}
print(json.dumps(out))
"""


def test_triton_kernels_compile_for_sm90(tmp_path):
    """The interpreter runs the kernels on CPU but does not compile them; Triton's own compiler and its bundled
    ptxas do, for an sm_90 target with no GPU present (in a child process: this one runs Triton interpreted).
    Every kernel and dtype compiles to a cubin without register spills."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # cwd: not the checkout, whose source tree (without fastgan.kernels) would shadow the installed package
    run = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(got) == 6
    for name, r in got.items():
        assert r["sm_90"] and r["cubin"] > 0 and not r["spills"], (name, r)


def test_closed_form_with_running_and_batch_statistics_in_one_d():
    """A D whose first BatchNorm uses running statistics and whose second uses batch statistics: the batch-statistics
    closed form runs both kinds of record; its gradients are the double backward's."""
    import copy

    from fastgan.ops import js_penalty

    torch.manual_seed(0)
    D = nn.Sequential(nn.Conv2d(3, 6, 3, 2, 1), nn.BatchNorm2d(6), nn.Tanh(), nn.Conv2d(6, 8, 3, 2, 1),
                      nn.BatchNorm2d(8), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(32, 1)).double()
    with torch.no_grad():
        D[1].running_mean.uniform_(-0.5, 0.5)
        D[1].running_var.uniform_(0.5, 2.0)
    D[1].eval()
    xr, xf = torch.randn(5, 3, 8, 8, dtype=torch.float64), torch.randn(5, 3, 8, 8, dtype=torch.float64)
    grads = {}
    for mode in ("mlp", "double_backward"):
        Dm = copy.deepcopy(D)
        before = backend_calls(K.OP, "cpu")
        pen, lr, lf = js_penalty(Dm, xr, xf, mode=mode, backend="cpu")
        (pen + lr.sum() - lf.sum()).backward()
        assert backend_calls(K.OP, "cpu") - before == (8 if mode == "mlp" else 0)  # the batch-statistics layer only
        grads[mode] = torch.cat([p.grad.reshape(-1) for p in Dm.parameters()])
    assert grads["double_backward"].norm() > 0
    torch.testing.assert_close(grads["mlp"], grads["double_backward"], rtol=1e-10, atol=1e-12)


def test_cuda_kernels_refuse_more_values_per_channel_than_they_index():
    """The CUDA kernels index a channel's B * spatial values in 32 bits: past that a ValueError saying what to use
    (they returned cudaErrorInvalidValue: "bn_cf_stats_cuda: invalid argument"). Checked before any launch, so a
    meta tensor of that size shows it here."""
    from fastgan.ops import bn_closed_form

    h = torch.empty(2**16, 1, 2**15, device="meta")
    with pytest.raises(ValueError, match=r"fewer than 2\*\*31 values per channel.*mode='jvp' or 'double_backward'"):
        bn_closed_form._KERNELS["cuda"].stats(h, 1e-5, h, h[0, :, 0])
    h = torch.empty(2**16, 1, 2**15 - 1, device="meta")
    with pytest.raises(Exception) as caught:  # under the limit: on to the launch (no CUDA tensors here)
        bn_closed_form._KERNELS["cuda"].stats(h, 1e-5, h, h[0, :, 0])
    assert "2**31" not in str(caught.value)


@pytest.mark.parametrize("shape", [(6, 5, 7), (2, 3, 20, 20), (3, 70)])
@pytest.mark.parametrize("gamma", [True, False])
def test_triton_channels_over_several_steps(monkeypatch, shape, gamma):
    """Under the interpreter a program takes a whole channel (up to 16384 values) in one step, a GPU 1024: with
    16 a step the loops over a channel's chunks run several times with a ragged last chunk, as on a GPU (mutation
    testing found a chunk offset dropped, every step rereading the first, passing every other test)."""
    from fastgan.kernels import bn_closed_form as kb

    monkeypatch.setattr(kb, "_block", lambda n, device: 16)
    x = _inputs(shape, gamma)
    got, want = _chain(x, "triton"), _chain(x, impl=ref)
    for k, w in want.items():
        if w is not None:
            torch.testing.assert_close(got[k], w, rtol=1e-11, atol=1e-11, msg=k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["rho", "lam"])
def test_vjp_centring_subtracts_a_mean_float32_cannot_hold(backend, which):
    """The vjp's element pass centres rho and lam on their means in two parts (bncf::split_shift; the Triton
    kernel's sr_hi/sr_lo, sl_hi/sl_lo), as the stats and centered passes centre h and t: a mean rounded to float32
    alone errs by up to half an ulp of it (1.5e-5 at 300), times rstd g (rho) or r2 q g (lam) in dh. Cotangents near
    300 and -200 with std 0.01 and rstd = g = q = 1: against float64 on the same float32 inputs (the 2x-oracle tests
    cannot see this: the float32 reference subtracts its own float32-rounded mean)."""
    dev = backend_device(backend)
    g = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    shape = (16, 6, 5)
    xhat = r(*shape)
    xhat = (xhat - xhat.mean((0, 2), keepdim=True)) / xhat.std((0, 2), unbiased=False, keepdim=True)
    rstd = torch.ones(6, dtype=torch.float64)
    t = xhat.clone()  # q = mean(xhat t) = 1: lam's coefficient -r2 q g is -1
    mt, q = ref.centered(xhat, t, rstd, None)[1:]
    far = {"rho": 300.0, "lam": -200.0}
    rho = (far["rho"] if which == "rho" else 0.0) + 0.01 * r(*shape)
    lam = (far["lam"] if which == "lam" else 0.0) + 0.01 * r(*shape)
    args = [v if v is None else v.float() for v in (rho, lam, xhat, t, rstd, None, mt, q)]  # no gamma
    dh = K.vjp(*(None if a is None else a.to(dev) for a in args), backend=backend)[0]
    want = ref.vjp(*(None if a is None else a.double() for a in args))[0]
    assert want.abs().max() < 0.2  # the case: dh of size std(rho) ~ 0.01, the means 300 / -200 cancelled
    torch.testing.assert_close(dh.cpu().double(), want, rtol=0, atol=1e-6)
