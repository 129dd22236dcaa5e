"""methods.roth.regularizer's modes against its double backward where an audit's differential fuzzing (penalties js,
r1, r2 and f with a linear g_f or an uncoupled D) found them apart: "auto"'s failed jvp check on the fake batch, a
refusal after the real batch's forward, and per-sample weights that require grad."""
import warnings

import pytest
import torch
from torch import nn

from fastgan.methods.roth import regularizer
from fastgan.ops import _dispatch

from helpers import NoJvpTanh, auto_as_on_cuda


def _no_jvp_bn_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), NoJvpTanh(), nn.Linear(8, 1)).double()


def _batches(B=6, Bf=5):
    g = torch.Generator().manual_seed(1)
    xr = torch.randn(B, 3, generator=g, dtype=torch.float64)
    xf = torch.randn(Bf, 3, generator=g, dtype=torch.float64)
    w = torch.rand(Bf, generator=g, dtype=torch.float64)
    return xr, xf, w / w.sum()


def _run(D, start, penalty, f, mode, xr, xf, wr=None, wf=None):
    """(Omega, logits, gradients of Omega + the logits for D's parameters and the weights, buffers, RNG after)."""
    D.load_state_dict(start)
    torch.manual_seed(7)
    wr = None if wr is None else wr.clone().requires_grad_(wr.requires_grad)
    wf = None if wf is None else wf.clone().requires_grad_(wf.requires_grad)
    leaves = list(D.parameters()) + [w for w in (wr, wf) if w is not None and w.requires_grad]
    omega, lr, lf = regularizer(D, penalty, xr, xf, wr, wf, f=f, mode=mode)
    grads = torch.autograd.grad(omega + 0.3 * lr.sum() - 0.2 * lf.sum(), leaves, allow_unused=True)
    return omega.detach(), lr.detach(), lf.detach(), grads, [b.clone() for b in D.buffers()], torch.get_rng_state()


def _assert_same(got, want):
    for a, b in zip(got[:3], want[:3]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    scale = max(t.abs().max().item() for t in want[3] if t is not None)
    for a, b in zip(got[3], want[3]):
        assert (a is None) == (b is None)  # r1's w_fake and r2's w_real take no part
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * scale)
    for a, b in zip(got[4], want[4]):
        assert torch.equal(a, b)
    assert torch.equal(got[5], want[5])


@pytest.mark.parametrize("weighted", [False, True], ids=["mean", "weighted"])
@pytest.mark.parametrize("penalty,f", [("r2", "gan"), ("f", "kl"), ("f", "pearson"), ("js", "gan")])
def test_auto_whose_check_fails_on_the_fake_batch_keeps_the_real_logits(monkeypatch, penalty, f, weighted):
    """"auto" as on CUDA checks jvp on the fake batch after the real batch's forward (r2, f with a linear g_f); the
    failed check put D's buffers back in place, which the real logits' graph saved, and their backward raised
    "modified by an inplace operation". Now the real logits are taken again: the double backward's values,
    gradients, buffers and draws."""
    D = _no_jvp_bn_mlp()
    start = {k: v.clone() for k, v in D.state_dict().items()}
    xr, xf, w = _batches()
    wf = w if weighted else None
    want = _run(D, start, penalty, f, "double_backward", xr, xf, None, wf)
    auto_as_on_cuda(monkeypatch)
    with pytest.warns(_dispatch.FallbackWarning, match="jvp path does not support this discriminator"):
        got = _run(D, start, penalty, f, "auto", xr, xf, None, wf)
    _assert_same(got, want)
    _assert_same(_run(D, start, penalty, f, "auto", xr, xf, None, wf), want)  # the verdict kept: no check


def _mlp_refused_D():
    """BatchNorm and Dropout (state and draws), ELU (which the closed form refuses)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.ELU(), nn.Linear(8, 1)).double()


@pytest.mark.parametrize("weighted", [False, True], ids=["mean", "weighted"])
@pytest.mark.parametrize("penalty,f", [("r2", "gan"), ("f", "kl"), ("f", "gan")])
@pytest.mark.parametrize("mode", ["mlp", "jvp"])
def test_a_refused_call_leaves_d_and_the_generators_as_at_the_call(penalty, f, mode, weighted):
    """A mode refusing D on the fake batch had run the real batch's forward: D's BatchNorm statistics and the
    dropout draws stayed advanced."""
    D = _mlp_refused_D() if mode == "mlp" else _no_jvp_bn_mlp()
    if penalty == "f" and f == "gan":
        D.eval()  # uncoupled: psi's penalty with the sigmoid weight (a BatchNorm D takes T's gradient, tested apart)
        D[2].train()
    xr, xf, w = _batches()
    start = {k: v.clone() for k, v in D.state_dict().items()}
    torch.manual_seed(3)
    rng = torch.get_rng_state()
    with pytest.raises((ValueError, NotImplementedError), match="mlp' cannot run this D|forward-mode AD cannot run"):
        regularizer(D, penalty, xr, xf, None, w if weighted else None, f=f, mode=mode)
    for k, v in D.state_dict().items():
        assert torch.equal(v, start[k]), k
    assert torch.equal(torch.get_rng_state(), rng)


def _weights_D(bn):
    torch.manual_seed(0)
    layers = [nn.Linear(3, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.LeakyReLU(0.2), nn.Linear(8, 1)]
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize("on_cuda", [False, True], ids=["cpu-rules", "cuda-rules"])
@pytest.mark.parametrize("bn", [False, True], ids=["plain", "batchnorm"])
@pytest.mark.parametrize("penalty,f", [("js", "gan"), ("r1", "gan"), ("r2", "gan"), ("f", "gan"), ("f", "kl")])
def test_weights_that_require_grad_get_their_gradient(monkeypatch, penalty, f, bn, on_cuda):
    """w_real / w_fake requiring grad: "auto" (jvp on CUDA, and the fused weighting wherever it ran) held them
    constant, a silent None for their gradient; "jvp" refuses them, naming them."""
    D = _weights_D(bn)
    start = {k: v.clone() for k, v in D.state_dict().items()}
    xr, xf, wf = _batches(5, 5)
    wr = wf.flip(0).clone().requires_grad_(True)
    wf = wf.clone().requires_grad_(True)
    want = _run(D, start, penalty, f, "double_backward", xr, xf, wr, wf)
    if on_cuda:
        auto_as_on_cuda(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no check, no fallback: the per-sample penalties
        _assert_same(_run(D, start, penalty, f, "auto", xr, xf, wr, wf), want)
    with pytest.raises(ValueError, match="'jvp' cannot differentiate Omega w.r.t. per-sample weights"):
        regularizer(D, penalty, xr, xf, wr, wf, f=f, mode="jvp")


def _bn_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double()


@pytest.mark.parametrize("weighted", [False, True], ids=["mean", "weighted"])
@pytest.mark.parametrize("penalty,f", [("js", "gan"), ("r1", "gan"), ("r2", "gan"), ("f", "kl"), ("f", "gan")])
@pytest.mark.parametrize("mode", ["double_backward", "auto", "jvp"])
def test_a_compiled_d_gives_the_values_of_the_module_it_wraps(penalty, f, mode, weighted):
    """A torch.compile'd D (AOT autograd, which has no double backward) runs as its module, as under the ops: the
    weighted penalties, r1, r2 and f by the double backward raised "does not currently support double backward"
    (only the plain js went through fastgan.ops.js_penalty); "f" with "gan" on this BatchNorm D takes T's gradient."""
    D = _bn_mlp()
    start = {k: v.clone() for k, v in D.state_dict().items()}
    xr, xf, w = _batches()
    wr = torch.full((xr.shape[0],), 1.0 / xr.shape[0], dtype=torch.float64) if weighted else None
    wf = w if weighted else None
    want = _run(D, start, penalty, f, mode, xr, xf, wr, wf)
    compiled_start = {f"_orig_mod.{k}": v for k, v in start.items()}
    got = _run(torch.compile(D, backend="aot_eager"), compiled_start, penalty, f, mode, xr, xf, wr, wf)
    _assert_same(got, want)


def test_wgan_gp_of_a_compiled_d_gives_the_values_of_its_module():
    from fastgan.methods.losses import gp_per_sample

    D = _bn_mlp().eval()
    xr, xf, _ = _batches(5, 5)
    u = torch.rand(5, dtype=torch.float64)
    params = list(D.parameters())[:-1]  # the output bias does not reach the input gradient
    want = torch.autograd.grad(gp_per_sample(D, xr, xf, u).sum(), params)
    got = torch.autograd.grad(gp_per_sample(torch.compile(D, backend="aot_eager"), xr, xf, u).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


class _RowLogits(nn.Module):
    """Logits (1, B): one per sample, but not in the shape the ops take."""

    def __init__(self):
        super().__init__()
        self.net = _bn_mlp()

    def forward(self, x):
        return self.net(x).reshape(1, -1)


@pytest.mark.parametrize("penalty,f", [("js", "gan"), ("r1", "gan"), ("r2", "gan"), ("f", "kl"), ("f", "gan")])
@pytest.mark.parametrize("mode", ["double_backward", "auto", "jvp"])
@pytest.mark.parametrize("weighted", [False, True], ids=["mean", "weighted"])
def test_logits_of_another_shape_are_refused_by_every_mode(penalty, f, mode, weighted):
    """Omega_f's and the weighted penalties' double backward reshaped D's (1, B) logits to (B,) where jvp and the ops
    refuse them: every path refuses them alike."""
    xr, xf, w = _batches()
    wf = w if weighted else None
    with pytest.raises(ValueError, match=r"logits of shape \(6,\) or \(6, 1, \.\.\., 1\), got \(1, 6\)"):
        regularizer(_RowLogits(), penalty, xr, xf, None, wf, f=f, mode=mode)


@pytest.mark.parametrize("penalty", ["r1", "r2"])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_omega_reached_by_no_trainable_parameter_still_requires_grad(penalty, batchnorm):
    """Only D's last bias trainable: psi depends on it, Omega (r1/r2) does not; jvp's Omega requires grad as the
    double backward's does (it had no graph: Omega.backward() raised)."""
    torch.manual_seed(0)
    layers = [nn.Linear(3, 8)] + ([nn.BatchNorm1d(8)] if batchnorm else []) + [nn.LeakyReLU(0.2), nn.Linear(8, 1)]
    D = nn.Sequential(*layers).double().requires_grad_(False)
    D[-1].bias.requires_grad_(True)
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    want = regularizer(D, penalty, x, y, mode="double_backward")
    got = regularizer(D, penalty, x, y, mode="jvp")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
        assert a.requires_grad
    got[0].backward()
    assert D[-1].bias.grad is None
