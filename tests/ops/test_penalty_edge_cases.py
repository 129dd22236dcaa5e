"""gradient_penalty / js_penalty / r1_penalty / r2_penalty on inputs at the edges, in every mode, against the
double backward of fastgan.reference.penalty in float64: empty batches ("auto" runs the double backward, as the
reference: nan for a mean over no samples; "jvp"/"mlp" refuse them naming the argument), inputs whose elements
share memory (expand()), and calls under torch.no_grad() or inference_mode() (the value and logits without a
graph, D's buffers advancing as with grad enabled)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.ops import _dispatch, gradient_penalty, js_penalty, penalty_jvp, penalty_mode, r1_penalty, r2_penalty
from fastgan.reference import penalty as ref

from penalty_zoo import DS  # tests/ on sys.path

MODES = ["double_backward", "jvp", "mlp", "auto"]
MODE_OP = "gradient_penalty"


def _mlp():
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1)).double()


def _conv_bn():
    """BatchNorm with batch statistics: the closed form's batch-coupled path, and running statistics to advance."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 1)).double()


NETS = {"mlp": (_mlp, lambda B: torch.randn(B, 5, dtype=torch.float64)),
        "conv_bn": (_conv_bn, lambda B: torch.randn(B, 3, 6, 6, dtype=torch.float64))}


def _net(name, seed=0):
    torch.manual_seed(seed)
    factory, make_x = NETS[name]
    return factory(), make_x


def _count(mode):
    return _dispatch.counts[(MODE_OP, mode)]


def _assert_same_grads(D_got, D_want):
    for (name, p), q in zip(D_want.named_parameters(), D_got.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, msg=name)


def _assert_same_buffers(D_got, D_want):
    for (name, b), c in zip(D_want.named_buffers(), D_got.buffers()):
        torch.testing.assert_close(c, b, rtol=0, atol=0, equal_nan=True, msg=name)


# ------------------------------------------------------------------ empty batches

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("net", list(NETS))
def test_auto_runs_the_double_backward_on_an_empty_batch(net, reduction):
    D, make_x = _net(net)
    x = make_x(0)
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    pen_r, l_r = ref.gradient_penalty(D_ref, x, "js_real", reduction)
    before = _count("double_backward")
    pen, l = gradient_penalty(D_new, x, "js_real", reduction=reduction, mode="auto")
    assert _count("double_backward") == before + 1
    torch.testing.assert_close(pen, pen_r, equal_nan=True)  # nan for a mean over no samples, as the reference
    assert l.shape == l_r.shape == (0,)
    if reduction == "sum":
        assert pen.item() == 0
        (pen_r + l_r.sum()).backward()
        (pen + l.sum()).backward()
        _assert_same_grads(D_new, D_ref)
    _assert_same_buffers(D_new, D_ref)


@pytest.mark.parametrize("net", list(NETS))
def test_penalty_mode_says_double_backward_for_an_empty_batch(net):
    D, make_x = _net(net)
    mode, why = penalty_mode(D, make_x(0))
    assert mode == "double_backward" and "empty batch" in why, why


@pytest.mark.parametrize("mode", ["jvp", "mlp"])
@pytest.mark.parametrize("net", list(NETS))
def test_jvp_and_mlp_refuse_an_empty_batch_naming_the_argument(net, mode):
    D, make_x = _net(net)
    for fn in (r1_penalty, r2_penalty, lambda D, x, mode: gradient_penalty(D, x, "js_fake", mode=mode)):
        with pytest.raises(ValueError, match=rf"^x has no samples: mode='{mode}' needs at least one"):
            fn(D, make_x(0), mode=mode)
    with pytest.raises(ValueError, match=rf"^x_real has no samples: mode='{mode}' needs at least one"):
        js_penalty(D, make_x(0), make_x(4), mode=mode)
    with pytest.raises(ValueError, match=rf"^x_fake has no samples: mode='{mode}' needs at least one"):
        js_penalty(D, make_x(4), make_x(0), mode=mode)


@pytest.mark.parametrize("joint", [False, True], ids=["two_passes", "joint_pass"])
@pytest.mark.parametrize("empty", ["real", "fake"])
@pytest.mark.parametrize("net", list(NETS))
def test_js_penalty_auto_with_one_empty_batch(net, empty, joint, monkeypatch):
    """The non-empty batch runs as "auto" picks for it, the empty one by the double backward; the joint real+fake
    closed-form pass (on CUDA, and on CPU for an MLP up to 1024 rows) must not take an empty batch either."""
    if joint:
        monkeypatch.setattr(penalty_jvp, "JOINT_MLP_DEVICES", {"cuda", "cpu"})
    else:
        monkeypatch.setattr(penalty_jvp, "JOINT_MLP_MAX_ROWS", {})
    D, make_x = _net(net)
    xr, xf = (make_x(0), make_x(4)) if empty == "real" else (make_x(4), make_x(0))
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    pen_r, lr_r, lf_r = ref.js_penalty(D_ref, xr, xf)
    before = {m: _count(m) for m in MODES}
    pen, lr, lf = js_penalty(D_new, xr, xf, mode="auto")
    assert {m: _count(m) - before[m] for m in MODES} == {"double_backward": 1, "jvp": 0, "mlp": 1, "auto": 0}
    torch.testing.assert_close(pen, pen_r, equal_nan=True)
    assert torch.isnan(pen)
    torch.testing.assert_close(lr, lr_r)
    torch.testing.assert_close(lf, lf_r)
    _assert_same_buffers(D_new, D_ref)


@pytest.mark.parametrize("empty", ["real", "fake"])
def test_joint_closed_form_pass_follows_the_empty_batch_rule(empty, monkeypatch):
    monkeypatch.setattr(penalty_jvp, "JOINT_MLP_DEVICES", {"cuda", "cpu"})
    D, make_x = _net("mlp")
    xr, xf = (make_x(0), make_x(4)) if empty == "real" else (make_x(4), make_x(0))
    assert penalty_jvp.js_penalty_mlp(D, xr, xf, None, "auto") is None  # left to the per-batch calls
    with pytest.raises(ValueError, match=rf"^x_{empty} has no samples: mode='mlp' needs at least one"):
        penalty_jvp.js_penalty_mlp(D, xr, xf, None, "mlp")


# ------------------------------------------------------------------ inputs whose elements share memory

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("net", list(NETS))
def test_input_with_internal_overlap(net, mode):
    """x = one sample expanded to a batch (stride 0): forward-mode AD refuses such a primal, the jvp path must not."""
    D, make_x = _net(net)
    x = make_x(1).expand(4, *make_x(1).shape[1:])
    assert x.stride(0) == 0
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    pen_r, l_r = ref.gradient_penalty(D_ref, x, "js_fake")
    (pen_r + F.softplus(l_r).mean()).backward()
    pen, l = gradient_penalty(D_new, x, "js_fake", mode=mode)
    (pen + F.softplus(l).mean()).backward()
    torch.testing.assert_close(pen, pen_r)
    torch.testing.assert_close(l, l_r)
    _assert_same_grads(D_new, D_ref)
    _assert_same_buffers(D_new, D_ref)


# ------------------------------------------------------------------ torch.no_grad()

CALLS = {
    "gradient_penalty": lambda D, xr, xf, mode: gradient_penalty(D, xr, "js_real", mode=mode),
    "r1_penalty": lambda D, xr, xf, mode: r1_penalty(D, xr, mode=mode),
    "r2_penalty": lambda D, xr, xf, mode: r2_penalty(D, xf, mode=mode),
    "js_penalty": lambda D, xr, xf, mode: js_penalty(D, xr, xf, mode=mode),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("net,mode", [(net, mode) for net in NETS for mode in MODES]
                         # not an nn.Sequential: "auto" takes the double backward on CPU, "mlp" cannot run it
                         + [("conv_bn_zoo", mode) for mode in MODES if mode != "mlp"])
@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_under_no_grad_every_mode_returns_the_values_without_a_graph(net, mode, call, context):
    """One behaviour for every mode: the values (and logits) of the same call with grad enabled, no graph, and D's
    buffers advanced as that call advances them; under inference_mode too, with the batches made there (inference
    tensors, which autograd cannot save)."""
    if net == "conv_bn_zoo":
        factory, make_x, _ = DS["conv_bn"]
        torch.manual_seed(0)
        D = factory().double()
        make = lambda B: make_x(B).double()  # noqa: E731
    else:
        D, make = _net(net)
    xr, xf = make(6), make(6) * 0.5 + 0.3
    D_grad, D_nograd = copy.deepcopy(D), copy.deepcopy(D)
    want = CALLS[call](D_grad, xr, xf, mode)
    assert want[0].requires_grad
    before = {m: _count(m) for m in MODES}
    with torch.no_grad() if context == "no_grad" else torch.inference_mode():
        got = CALLS[call](D_nograd, xr.clone(), xf.clone(), mode)
    ran = {m: _count(m) - before[m] for m in MODES}
    assert sum(ran.values()) == (2 if call == "js_penalty" else 1) and ran["auto"] == 0
    if mode != "auto":
        assert ran[mode] == sum(ran.values())
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert not g.requires_grad and g.grad_fn is None
        torch.testing.assert_close(g, w.detach(), rtol=0, atol=0)
    _assert_same_buffers(D_nograd, D_grad)
    # and the values are the reference's
    pen_r = (ref.js_penalty(copy.deepcopy(D), xr, xf)[0] if call == "js_penalty"
             else ref.gradient_penalty(copy.deepcopy(D), xr if call != "r2_penalty" else xf,
                                       "js_real" if call == "gradient_penalty" else "one")[0])
    torch.testing.assert_close(got[0], pen_r.detach())


def test_no_grad_with_the_jvp_check_of_auto(auto_jvp_on_cpu):
    """"auto" choosing as on CUDA: its one-time jvp check (a double backward and gradients) runs under no_grad too."""
    factory, make_x, _ = DS["conv_bn"]
    torch.manual_seed(0)
    D = factory().double()
    x = make_x(6).double()
    D_grad, D_nograd = copy.deepcopy(D), copy.deepcopy(D)
    want = r1_penalty(D_grad, x, mode="auto")
    before = _count("jvp")
    with torch.no_grad():
        got = r1_penalty(D_nograd, x, mode="auto")
    assert _count("jvp") == before + 1
    for g, w in zip(got, want):
        assert g.grad_fn is None
        torch.testing.assert_close(g, w.detach(), rtol=0, atol=0)
    _assert_same_buffers(D_nograd, D_grad)


# ------------------------------------------------------------------ a callable weight that ignores the logits

@pytest.mark.parametrize("weight", [lambda psi: 0.5 * torch.ones_like(psi),  # R1's, scaled: no graph
                                    lambda psi: torch.full(psi.shape, 0.25, dtype=psi.dtype)],
                         ids=["ones_like", "full"])
@pytest.mark.parametrize("net,mode", [("mlp", "jvp"), ("mlp", "mlp"), ("conv_bn", "jvp"), ("conv_bn", "mlp")])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_a_constant_callable_weight_in_every_mode(net, mode, weight, reduction):
    """w'(psi) = 0: the jvp path's and the closed form's derivative of the weight once called autograd.grad on a
    tensor without a graph (roth+nt's mu-weighted R1, R2 and constant f-GAN weights crashed there)."""
    D, make = _net(net)
    x = make(6)
    D_want, D_got = copy.deepcopy(D), copy.deepcopy(D)
    want, _ = gradient_penalty(D_want, x, weight, reduction=reduction, mode="double_backward")
    want.backward()
    before = _count(mode)
    got, _ = gradient_penalty(D_got, x, weight, reduction=reduction, mode=mode)
    assert _count(mode) == before + 1
    got.backward()
    torch.testing.assert_close(got, want)
    for (name, p), q in zip(D_want.named_parameters(), D_got.parameters()):
        # the last bias has no part in the penalty: None or zeros, as the mode's graph has it
        zero = lambda t: torch.zeros_like(q) if t is None else t  # noqa: E731
        torch.testing.assert_close(zero(q.grad), zero(p.grad), msg=name)


def _strided(t):
    """t's values in a view of a tensor twice its size (stride 2)."""
    return torch.stack([t, t + 100], -1).flatten()[::2]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_closed_form_with_batchnorm_weights_that_are_strided_views(training, create_graph, backend):
    """BatchNorm weight and bias that are views with stride 2: mode="mlp" computes what it computes for their
    contiguous copies (it refused batch statistics, "gamma must be contiguous", and its create_graph recompute of
    eval-mode BatchNorm took torch's batch_norm backward, which misreads a strided weight on torch 2.13's CPU;
    the double backward and jvp differentiate D's own forward, so they inherit that torch bug)."""
    def D_of(strided):
        torch.manual_seed(1)
        D = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.LeakyReLU(0.2), nn.Linear(8, 1)).double()
        with torch.no_grad():
            D[1].running_mean.normal_()
            D[1].running_var.uniform_(0.5, 2)
            D[1].weight.uniform_(0.5, 1.5)
            D[1].bias.normal_()
        if strided:
            D[1].weight = nn.Parameter(_strided(D[1].weight.detach()))
            D[1].bias = nn.Parameter(_strided(D[1].bias.detach()))
        return D.train(training)
    x = torch.randn(5, 6, dtype=torch.float64)
    got, want = [], []
    for strided, out in ((True, got), (False, want)):
        D = D_of(strided)
        assert D[1].weight.is_contiguous() != strided
        pen, psi = gradient_penalty(D, x, "js_real", backend=backend, mode="mlp")
        params = [D[0].weight, D[1].weight, D[1].bias]
        grads = torch.autograd.grad(pen + psi.sum(), params, create_graph=create_graph)
        out += [pen, *grads]
        if create_graph:
            out += torch.autograd.grad(sum(g.pow(2).sum() for g in grads), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
