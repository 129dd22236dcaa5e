"""Penalty modes "jvp", "mlp" and "auto" differentiated twice: a backward with create_graph=True must give the
same gradient (as a differentiable function of D's parameters) as the straightforward double backward of
fastgan.reference.penalty, so Hessian-vector products of loss_D + gamma/2 * Omega agree; a plain backward
must not take that path; D's buffers and the random-number state must be left as one call leaves them.

The oracle runs batch/instance/layer norm with batch statistics from primitive ops (_PrimitiveNorms): torch's
fused kernels have silently wrong third derivatives (pytorch/pytorch#186256, #175754), and a Hessian-vector
product of a gradient penalty is a third derivative of D."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from fastgan.ops import _dispatch, gradient_penalty, js_penalty, mlp_penalty, penalty_jvp
from fastgan.reference import penalty as ref

from penalty_zoo import DS, IMG, MLPS, VEC, DropoutConvD, NormZoo, mlp_bn_train  # tests/ on sys.path (conftest)

GAMMA = 2.0
KEY = ("gradient_penalty", "create_graph")


def _normalize(x, dims, shape, weight, bias, eps):
    mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.reshape(shape)
    return y if bias is None else y + bias.reshape(shape)


def _update_running(rm, rv, mean, var, n, momentum):
    if rm is not None:
        with torch.no_grad():
            rm.mul_(1 - momentum).add_(momentum * mean)
            rv.mul_(1 - momentum).add_(momentum * n / (n - 1) * var)


class _PrimitiveNorms(TorchFunctionMode):
    """F.batch_norm (batch statistics), F.instance_norm and F.layer_norm as mean/var/sqrt ops, differentiable
    to any order, running statistics updated as torch does (the test compares the buffers with torch's)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.batch_norm, torch.native_batch_norm, torch.instance_norm, torch.layer_norm):
            raise AssertionError(f"the oracle has no primitive form of {func.__name__}")
        if func is F.layer_norm:
            a = dict(zip(("input", "normalized_shape", "weight", "bias", "eps"), args), **kwargs)
            x, k = a["input"], len(a["normalized_shape"])
            dims = list(range(x.dim() - k, x.dim()))
            return _normalize(x, dims, x.shape[x.dim() - k:], a.get("weight"), a.get("bias"), a.get("eps", 1e-5))
        if func is F.batch_norm:
            names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
            a = dict(zip(names, args), **kwargs)
            x = a["input"]
            if not a.get("training", False) and a.get("running_mean") is not None:
                return func(*args, **kwargs)
            dims = [0] + list(range(2, x.dim()))
            if a.get("training", False):
                _update_running(a.get("running_mean"), a.get("running_var"), x.mean(dims),
                                x.var(dims, unbiased=False), x.numel() // x.shape[1], a.get("momentum", 0.1))
            return _normalize(x, dims, [1, -1] + [1] * (x.dim() - 2), a.get("weight"), a.get("bias"),
                              a.get("eps", 1e-5))
        if func is F.instance_norm:
            names = ("input", "running_mean", "running_var", "weight", "bias", "use_input_stats", "momentum", "eps")
            a = dict(zip(names, args), **kwargs)
            x = a["input"]
            if not a.get("use_input_stats", True):
                return func(*args, **kwargs)
            dims = list(range(2, x.dim()))
            _update_running(a.get("running_mean"), a.get("running_var"), x.mean(dims).mean(0),
                            x.var(dims, unbiased=False).mean(0), x[0, 0].numel(), a.get("momentum", 0.1))
            return _normalize(x, dims, [1, -1] + [1] * (x.dim() - 2), a.get("weight"), a.get("bias"),
                              a.get("eps", 1e-5))
        return func(*args, **kwargs)


def _loss(D, xr, xf, mode, seed=123):
    torch.manual_seed(seed)
    if mode == "reference":
        with _PrimitiveNorms():
            pen, lr, lf = ref.js_penalty(D, xr, xf)
    else:
        pen, lr, lf = js_penalty(D, xr, xf, mode=mode)
    return F.softplus(-lr).mean() + F.softplus(lf).mean() + GAMMA / 2 * pen


def _grad_and_hvp(D, xr, xf, mode, directions):
    params = [p for p in D.parameters() if p.requires_grad]
    grads = torch.autograd.grad(_loss(D, xr, xf, mode), params, create_graph=True)
    inner = sum((g * r).sum() for g, r in zip(grads, directions))
    rng = torch.get_rng_state()
    hvp = torch.autograd.grad(inner, params)
    assert torch.equal(torch.get_rng_state(), rng), "the second-order path left the global RNG moved"
    return [g.detach() for g in grads], hvp


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


CASES = [(name, "jvp") for name in DS] + [(name, "mlp") for name in MLPS] + [(name, "auto") for name in DS]


@pytest.fixture
def auto_jvp_on_cpu(monkeypatch):
    monkeypatch.setattr(penalty_jvp, "AUTO_JVP_DEVICES", {"cuda", "cpu"})


def _check_hvp(name, mode, device, replays=None):
    factory, make_x, _ = DS[name]
    torch.manual_seed(0)
    D = factory().double().to(device)
    xr, xf = make_x(6).double().to(device), (make_x(6).double() * 0.5 + 0.3).to(device)
    D_ref, D_new = copy.deepcopy(D), copy.deepcopy(D)
    directions = [torch.randn_like(p) for p in D.parameters() if p.requires_grad]
    g_want, hv_want = _grad_and_hvp(D_ref, xr, xf, "reference", directions)
    before = _dispatch.counts[KEY]
    g_got, hv_got = _grad_and_hvp(D_new, xr, xf, mode, directions)
    # js_penalty runs both batches in one pass where "auto" picks the closed form, but for spectral norm
    conv = any(isinstance(m, mlp_penalty.CONVS) for m in D.modules())
    closed = mode == "mlp" or (mode == "auto" and penalty_jvp.auto_mode(D, xr, "mean") == "mlp")
    joint = penalty_jvp.joint_pass(torch.device(device).type, len(xr) + len(xf), conv) and DS[name][2] == "mlp" \
        and "spectral" not in name and closed
    if replays is None:
        replays = 1 if joint else 2
    assert _dispatch.counts[KEY] == before + replays, "one create_graph backward per closed-form pass"
    assert _flat(hv_want).norm() > 0, "a zero Hessian-vector product would prove nothing"
    torch.testing.assert_close(_flat(g_got), _flat(g_want), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(_flat(hv_got), _flat(hv_want), rtol=1e-8, atol=1e-10 * _flat(hv_want).norm().item())
    for (bname, b), c in zip(D_ref.named_buffers(), D_new.buffers()):  # once per call, not again in the replay
        torch.testing.assert_close(c, b, rtol=1e-12, atol=1e-14, msg=f"buffer {bname}")


@pytest.mark.parametrize("name,mode", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_hessian_vector_product_matches_double_backward(name, mode, auto_jvp_on_cpu):
    _check_hvp(name, mode, "cpu")


# the zoo's Ds for which "auto" runs the double backward on the CPU (where it does not take jvp)
AUTO_DOUBLE_BACKWARD = ["mlp_tanh", "mlp_bn_eval", "mlp_bn_train", "conv_bn", "groupnorm_residual",
                        "conv_spectral_bn", "attention"]


@pytest.mark.parametrize("name", AUTO_DOUBLE_BACKWARD)
def test_auto_double_backward_to_third_order(name):
    """Where "auto" runs the double backward (the CPU's choice for these Ds), a Hessian-vector product is exact
    too: a D with BatchNorm on batch statistics (InstanceNorm, LayerNorm: the next test) has it from a replay
    with the norms in ordinary ops, one for both batches (js_penalty's joint pass); the others from the double
    backward's own graph (no replay).
    Before 2026-12-07 the BatchNorm Ds' were 40% off (an audit's finding), as mode "double_backward" still is."""
    factory, make_x, _ = DS[name]
    D, x = factory().double(), make_x(6).double()
    assert penalty_jvp.auto_mode(D, x, "mean") == "double_backward", "the case no longer tests auto's double backward"
    _check_hvp(name, "auto", "cpu", replays=1 if penalty_jvp.wrong_third_order_norms(D) else 0)


@pytest.mark.cuda
@pytest.mark.parametrize("name,mode", [("conv_bn", "jvp"), ("conv_spectral_bn", "auto"), ("mlp_bn_train", "mlp"),
                                       ("mlp_leaky", "mlp"), ("groupnorm_residual", "jvp")])
def test_cuda_hessian_vector_product_matches_double_backward(name, mode):
    """On CUDA, "auto" uses jvp without an opt-in and js_penalty runs an MLP's real and fake rows in one
    closed-form pass (one create_graph backward then covers both terms: hence the count check is per case)."""
    _check_hvp(name, mode, "cuda")


def test_dropout_masks_replayed_in_the_second_order_path():
    torch.manual_seed(0)
    D = DropoutConvD().double()
    xr, xf = IMG(6).double(), IMG(6).double()
    directions = [torch.randn_like(p) for p in D.parameters()]
    g_want, hv_want = _grad_and_hvp(copy.deepcopy(D), xr, xf, "reference", directions)
    g_got, hv_got = _grad_and_hvp(copy.deepcopy(D), xr, xf, "jvp", directions)
    torch.testing.assert_close(_flat(g_got), _flat(g_want), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(_flat(hv_got), _flat(hv_want), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("mode", ["jvp", "auto", "auto-double-backward"])
def test_norms_and_softmax_to_third_order(mode, monkeypatch):
    """LayerNorm, InstanceNorm with running statistics, BatchNorm, softmax / log_softmax / logsumexp: the ops
    whose torch forms the jvp path replaces, differentiated to third order of D; "auto" taking jvp (as on CUDA)
    or the double backward (the CPU's choice)."""
    if mode == "auto":
        monkeypatch.setattr(penalty_jvp, "AUTO_JVP_DEVICES", {"cuda", "cpu"})
    elif mode == "auto-double-backward":
        mode = "auto"
        assert penalty_jvp.auto_mode(NormZoo(), IMG(5), "mean") == "double_backward"
    torch.manual_seed(0)
    D = NormZoo().double()
    xr, xf = IMG(5).double(), IMG(5).double() * 0.5
    directions = [torch.randn_like(p) for p in D.parameters()]
    g_want, hv_want = _grad_and_hvp(copy.deepcopy(D), xr, xf, "reference", directions)
    D_new = copy.deepcopy(D)
    g_got, hv_got = _grad_and_hvp(D_new, xr, xf, mode, directions)
    torch.testing.assert_close(_flat(g_got), _flat(g_want), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(_flat(hv_got), _flat(hv_want), rtol=1e-8, atol=1e-10 * _flat(hv_want).norm().item())


def _hvp_of(penalty, D, directions):
    params = [p for p in D.parameters() if p.requires_grad]
    pen, logits = penalty(D)
    grads = torch.autograd.grad(pen + F.softplus(logits).mean(), params, create_graph=True)
    return _flat(torch.autograd.grad(sum((g * r).sum() for g, r in zip(grads, directions)), params))


def _penalty_fn(mode, x, weight, reduction):
    if mode == "reference":
        return lambda D: ref.gradient_penalty(D, x, weight, reduction)
    return lambda D: gradient_penalty(D, x, weight, reduction=reduction, mode=mode)


WEIGHTINGS = {"r1-mean": ("one", "mean"), "js_fake-sum": ("js_fake", "sum"),
              "callable": (lambda p: torch.sigmoid(p) * 0.5 + p * p, "mean")}


@pytest.mark.parametrize("weighting", list(WEIGHTINGS))
@pytest.mark.parametrize("name,mode", [("conv_bn", "jvp"), ("mlp_tanh", "mlp"), ("mlp_bn_train", "mlp"),
                                       ("mlp_leaky", "jvp"), ("conv_bn", "auto")])
def test_weights_and_reductions_to_third_order(name, mode, weighting):
    factory, make_x, _ = DS[name]
    torch.manual_seed(0)
    D = factory().double()
    x = make_x(6).double()
    directions = [torch.randn_like(p) for p in D.parameters()]
    with _PrimitiveNorms():
        want = _hvp_of(_penalty_fn("reference", x, *WEIGHTINGS[weighting]), copy.deepcopy(D), directions)
    got = _hvp_of(_penalty_fn(mode, x, *WEIGHTINGS[weighting]), copy.deepcopy(D), directions)
    assert want.norm() > 0
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10 * want.norm().item())


def test_first_order_backward_keeps_the_fast_path():
    for name, mode in (("conv_bn", "jvp"), ("mlp_leaky", "mlp"), ("mlp_bn_train", "mlp")):
        factory, make_x, _ = DS[name]
        D = factory().double()
        before = _dispatch.counts[KEY]
        _loss(D, make_x(5).double(), make_x(5).double(), mode).backward()
        assert _dispatch.counts[KEY] == before, f"{name}/{mode}: a plain backward ran the create_graph path"


# ------------------------------------------------------------------ gradgradcheck on the parameters

def _mlp_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 3), (8,), (8, 8), (8,), (1, 8), (1,)]
    return [(torch.randn(s, generator=g, dtype=torch.float64) * 0.7).requires_grad_(True) for s in shapes]


def test_gradgradcheck_jvp_functional_d():
    x = VEC(5).double()

    def penalty(W1, b1, W2, b2, W3, b3):
        def D(inp):
            h = F.leaky_relu(F.linear(inp, W1, b1), 0.2)
            return F.linear(torch.tanh(F.linear(h, W2, b2)), W3, b3)

        pen, logits = gradient_penalty(D, x, "js_real", mode="jvp")
        return pen + F.softplus(-logits).mean()

    assert torch.autograd.gradcheck(penalty, _mlp_params())
    assert torch.autograd.gradgradcheck(penalty, _mlp_params())


@pytest.mark.parametrize("train_bn", [False, True], ids=["mlp", "mlp_bn_train"])
def test_gradgradcheck_mlp_closed_form(train_bn):
    """The closed form reads D's weights from its modules: the gradcheck inputs replace them as attributes."""
    torch.manual_seed(0)
    D = mlp_bn_train().double() if train_bn else nn.Sequential(
        nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    slots = [(m, n) for m in D.modules() if isinstance(m, (nn.Linear, nn.BatchNorm1d))
             for n in ("weight", "bias") if getattr(m, n) is not None]
    inputs = [getattr(m, n).detach().clone().requires_grad_(True) for m, n in slots]
    for m, n in slots:
        delattr(m, n)
    x = VEC(6).double()

    def penalty(*ts):
        for (m, n), t in zip(slots, ts):
            setattr(m, n, t)
        before = _dispatch.counts[("gradient_penalty", "mlp")]
        pen, logits = gradient_penalty(D, x, "js_fake", mode="mlp")
        assert _dispatch.counts[("gradient_penalty", "mlp")] == before + 1
        return pen + F.softplus(logits).mean()

    assert torch.autograd.gradcheck(penalty, inputs)
    assert torch.autograd.gradgradcheck(penalty, inputs)


def test_stray_tensor_in_d_raises_on_create_graph():
    """A Module whose output depends on a tensor that is not one of its parameters: first order is fine, the
    create_graph path (which differentiates w.r.t. D's parameters) says what is missing instead of dropping it."""
    torch.manual_seed(0)
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, x):
            return self.lin(torch.tanh(x)) * scale

    D = Scaled().double()
    x = VEC(5).double()
    pen, _ = gradient_penalty(D, x, "js_real", mode="jvp")
    (g_scale,) = torch.autograd.grad(pen, scale, retain_graph=True)
    pen_ref, _ = ref.gradient_penalty(D, x, "js_real")
    torch.testing.assert_close(g_scale, torch.autograd.grad(pen_ref, scale)[0], rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="not D's parameters"):
        torch.autograd.grad(pen, list(D.parameters()), create_graph=True)
