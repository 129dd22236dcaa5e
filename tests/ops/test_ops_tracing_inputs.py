"""Inputs the eager fast paths must hand to the custom ops instead (the eager Functions give the kernels
data_ptr()): fake and meta tensors, tensor subclasses, torch.func.vmap; and arguments that once slipped through
unchecked: a tensor replaced after the first call, non-finite numbers, strings for bools, a callable weight of the
wrong shape, a raw noise state the kernels would misread, a device string torch cannot parse."""
import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.testing._internal.logging_tensor import LoggingTensor

from fastgan.ops import (Denoiser, _dispatch, bn_relu, default_noise_state, denoiser_generator_loss, denoiser_loss,
                         grad_norm_penalty, gradient_penalty, noisy_clean_batch, nt_losses)
from fastgan.reference import denoiser as ref

from denoiser_helpers import make_pair


def _layers(n=4, depth=1):
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(n, n, generator=g) for _ in range(depth + 1)]
    b = [torch.randn(n, generator=g) for _ in range(depth + 1)]
    return w, b, [torch.ones(n)] * depth, [torch.zeros(n)] * depth, [torch.zeros(n) for _ in range(depth)], \
        [torch.ones(n) for _ in range(depth)]


# ---------------------------------------------------------------- fake / meta / subclasses / vmap

CALLS = {
    "bn_relu": lambda den: bn_relu(torch.randn(5, 3), None, torch.ones(3), torch.zeros(3)),
    "bn_relu_eval": lambda den: bn_relu(torch.randn(5, 3), None, torch.ones(3), torch.zeros(3), torch.zeros(3),
                                        torch.ones(3), training=False),
    "denoiser_loss": lambda den: denoiser_loss(torch.randn(5, 4), *_layers(), training=False),
    "denoiser_generator_loss": lambda den: denoiser_generator_loss(torch.randn(5, 4), *_layers()[:4]),
    "Denoiser.forward": lambda den: den(torch.randn(5, 4)),
    "Denoiser.loss": lambda den: den.loss(torch.randn(5, 4)),
    "Denoiser.generator_loss": lambda den: den.generator_loss(torch.randn(5, 4)),
}
SHAPES = {"bn_relu": (5, 3), "bn_relu_eval": (5, 3), "Denoiser.forward": (5, 4)}


@pytest.mark.parametrize("call", list(CALLS))
def test_fake_tensors_run_the_custom_ops(call):
    """Under FakeTensorMode the eager Functions gave the C++ kernels null pointers (a segmentation fault)."""
    den = Denoiser(4, 4, 1)
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = CALLS[call](den)
    assert type(out).__name__ == "FakeTensor"
    assert tuple(out.shape) == SHAPES.get(call, ())


def test_meta_denoiser_and_bn_relu():
    """Every meta tensor's data_ptr() is 0: the overlap check of running statistics took them all for one."""
    den = Denoiser(4, device="meta")
    assert den.net[0].weight.is_meta
    with torch.device("meta"):
        assert Denoiser(4).net[1].running_mean.is_meta
    y = torch.randn(4, 3, device="meta")
    out = bn_relu(y, None, torch.ones(3, device="meta"), torch.zeros(3, device="meta"), torch.zeros(3, device="meta"),
                  torch.ones(3, device="meta"), backend="reference")
    assert out.is_meta and out.shape == (4, 3)


def test_a_tensor_subclass_takes_the_custom_op():
    y = LoggingTensor(torch.randn(5, 3))
    out = bn_relu(y, None, torch.ones(3), torch.zeros(3))
    assert isinstance(out, LoggingTensor)
    want = torch.relu(nn.functional.batch_norm(y.elem, None, None, torch.ones(3), torch.zeros(3), True))
    torch.testing.assert_close(out.elem, want)


def test_vmap_over_bn_relu_and_the_denoiser_matches_a_loop():
    ys = torch.randn(2, 5, 3, dtype=torch.float64)
    gamma, beta = torch.rand(3, dtype=torch.float64) + 0.5, torch.randn(3, dtype=torch.float64)
    got = torch.func.vmap(lambda y: bn_relu(y, None, gamma, beta))(ys)
    for y, g in zip(ys, got):
        torch.testing.assert_close(g, torch.relu(nn.functional.batch_norm(y, None, None, gamma, beta, True)))
    den, net = make_pair(n=3, hidden=4, depth=1, training=False)
    got = torch.func.vmap(den)(ys)
    for y, g in zip(ys, got):
        torch.testing.assert_close(g, net(y))


@pytest.mark.skipif(not hasattr(torch.library, "register_vmap"), reason="torch < 2.5: no torch.library.register_vmap")
def test_vmap_over_the_denoisers_list_taking_ops_matches_a_loop():
    """fastgan::denoiser_loss, denoiser_forward and denoiser_loss_backward take the layers as Tensor[], which torch's
    per-sample vmap fallback refuses ("We could not generate a fallback"): Denoiser.loss, generator_loss and a no-grad
    forward failed under vmap even in eval mode (an audit, 2026-12-07). Their vmap rule loops over the samples."""
    ys, noise = torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(3, 5, 4, dtype=torch.float64)
    den, net = make_pair(n=4, hidden=6, depth=2, training=False)
    loop = lambda f, *xs: torch.stack([f(*x) for x in zip(*xs)])
    for f, xs in ((lambda h, e: den.loss(h, e), (ys, noise)), (den.generator_loss, (ys,))):
        torch.testing.assert_close(torch.func.vmap(f)(*xs), loop(f, *xs))
    got = torch.func.vmap(lambda h, e: den.loss(h, e))(ys, noise)
    got.sum().backward()  # the loop's gradients, taken outside vmap
    dw = den.net[0].weight.grad.clone()
    den.zero_grad()
    loop(lambda h, e: den.loss(h, e), ys, noise).sum().backward()
    torch.testing.assert_close(dw, den.net[0].weight.grad)
    with torch.no_grad():
        torch.testing.assert_close(torch.func.vmap(den)(ys), loop(net, ys))
    den.train()
    torch.testing.assert_close(torch.func.vmap(den.generator_loss)(ys), loop(den.generator_loss, ys))
    # weights batched too, vmapped over dim 1 of the features
    w, b, g, be, rm, rv = _layers(n=4, depth=1)
    ws = torch.randn(3, 4, 4)
    f = lambda h, e, w0: denoiser_loss(h, [w0, w[1]], b, g, be, rm, rv, noise=e, training=False)
    hs, es = ys.float(), noise.float()
    torch.testing.assert_close(torch.func.vmap(f, in_dims=(1, 1, 0))(hs.transpose(0, 1), es.transpose(0, 1), ws),
                               loop(f, hs, es, ws))


def test_vmap_over_running_statistics_in_training_mode_says_why():
    """A training-mode BatchNorm under vmap would update its (unbatched) running statistics once per sample; torch's
    batch_norm refuses it, and so does fastgan, saying so (it was torch's "Batching rule not implemented for
    aten::_foreach_copy_", or for fastgan::denoiser_loss)."""
    ys = torch.randn(2, 5, 3, dtype=torch.float64)
    den, _ = make_pair(n=3, hidden=4, depth=1, training=True)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    calls = [lambda y: bn_relu(y, None, torch.ones_like(rm), torch.zeros_like(rm), rm, rv), den]
    if hasattr(torch.library, "register_vmap"):
        calls.append(lambda y: den.loss(y, torch.zeros_like(y)))
    for call in calls:
        with pytest.raises(RuntimeError, match="under vmap a training-mode BatchNorm would update the running"):
            torch.func.vmap(call)(ys)


def test_plain_tensors_keep_the_eager_functions(monkeypatch):
    """The custom-op path is for what needs it: plain CPU tensors still skip the dispatcher."""
    from fastgan.ops import denoiser_eager

    den, _ = make_pair()
    eager = []
    real = denoiser_eager._EagerLoss.apply
    monkeypatch.setattr(denoiser_eager._EagerLoss, "apply", lambda *a: eager.append(1) or real(*a))
    before = _dispatch.counts.copy()
    den.loss(torch.randn(6, 12, dtype=torch.float64))
    assert eager == [1]
    assert _dispatch.counts[("denoiser_loss", "cpu")] == before[("denoiser_loss", "cpu")] + 1
    assert not denoiser_eager._custom_ops(torch.randn(2), None, torch.nn.Parameter(torch.randn(2)))
    assert denoiser_eager._custom_ops(torch.randn(2, device="meta"))
    assert denoiser_eager._custom_ops(torch.randn(2), LoggingTensor(torch.randn(2)))


# ---------------------------------------------------------------- tensors replaced after the first call

def test_running_statistics_aliased_after_the_first_call_are_refused():
    den, _ = make_pair()
    den.loss(torch.randn(6, 12, dtype=torch.float64))
    den.net[1].running_mean = den.net[1].running_var
    with pytest.raises(ValueError, match=r"running_vars\[0\] shares its memory with running_means\[0\]"):
        den.loss(torch.randn(6, 12, dtype=torch.float64))


def test_a_running_buffer_shared_across_layers_after_the_first_call_is_refused():
    den, _ = make_pair()
    den(torch.randn(6, 12, dtype=torch.float64))
    den.net[4].running_mean = den.net[1].running_mean
    with pytest.raises(ValueError, match=r"running_means\[1\] shares its memory with running_means\[0\]"):
        den(torch.randn(6, 12, dtype=torch.float64))


def test_a_bias_removed_after_the_first_call_is_named():
    den, _ = make_pair()
    den.loss(torch.randn(6, 12, dtype=torch.float64))
    den.net[0].bias = None
    with pytest.raises(ValueError, match=r"net\[0\]: Linear layers must have a bias"):
        den.loss(torch.randn(6, 12, dtype=torch.float64))


def test_a_fitting_replacement_tensor_is_used():
    den, net = make_pair(training=False)
    h = torch.randn(6, 12, dtype=torch.float64)
    den(h)
    new = torch.randn(16, dtype=torch.float64)
    den.net[0].bias = nn.Parameter(new.clone())
    net[0].bias = nn.Parameter(new.clone())
    torch.testing.assert_close(den(h), net(h))


# ---------------------------------------------------------------- numbers and flags

@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_sigma_and_eps_are_refused(value):
    den = Denoiser(4)
    with pytest.raises(ValueError, match="sigma must be"):
        den.sigma = value
    with pytest.raises(ValueError, match="eps must be"):
        Denoiser(4, eps=value)
    with pytest.raises(ValueError, match="eps must be"):
        bn_relu(torch.randn(4, 3), None, torch.ones(3), torch.zeros(3), eps=value)
    with pytest.raises(ValueError, match="sigma must be"):
        denoiser_loss(torch.randn(5, 4), *_layers(), sigma=value)


@pytest.mark.parametrize("value", ["False", "no", None, 2, 0.0])
def test_bool_flags_refuse_what_is_not_a_bool(value):
    x = torch.randn(4, 3)
    with pytest.raises(TypeError, match="js_weights must be a bool"):
        nt_losses(torch.randn(8), torch.randn(8), 0.5, js_weights=value)
    with pytest.raises(TypeError, match="training must be a bool"):
        bn_relu(x, None, torch.ones(3), torch.zeros(3), torch.zeros(3), torch.ones(3), training=value)
    with pytest.raises(TypeError, match="relu must be a bool"):
        bn_relu(x, None, torch.ones(3), torch.zeros(3), relu=value)
    with pytest.raises(TypeError, match="training must be a bool"):
        denoiser_loss(torch.randn(5, 4), *_layers(), training=value)
    with pytest.raises(TypeError, match="training must be a bool"):
        denoiser_generator_loss(torch.randn(5, 4), *_layers()[:4], training=value)
    with pytest.raises(TypeError, match="detach must be a bool"):
        Denoiser(4).loss(torch.randn(5, 4), detach=value)


def test_bool_flags_take_bools_and_zero_one():
    import numpy as np
    lr, lf = torch.randn(8), torch.randn(8)
    assert isinstance(nt_losses(lr, lf, 0.5, js_weights=np.bool_(True)), tuple)
    assert isinstance(nt_losses(lr, lf, 0.5, js_weights=1), tuple)
    assert isinstance(nt_losses(lr, lf, 0.5, js_weights=0), torch.Tensor)
    y = torch.randn(4, 3)
    torch.testing.assert_close(bn_relu(y, None, torch.ones(3), torch.zeros(3), relu=False),
                               nn.functional.batch_norm(y, None, None, torch.ones(3), torch.zeros(3), True))


# ---------------------------------------------------------------- penalty weights, noise state, devices

@pytest.mark.parametrize("call", ["gradient_penalty", "grad_norm_penalty"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_a_callable_weight_of_shape_b1_is_refused(call, reduction):
    """A (B, 1) weight broadcast against the (B,) squared norms into a (B, B) penalty (a wrong mean)."""
    D = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(4, 3)
    weight = lambda p: torch.sigmoid(p).reshape(-1, 1)
    with pytest.raises(ValueError, match=r"weight\(psi\) must return a tensor of shape \(4,\), got \(4, 1\)"):
        if call == "gradient_penalty":
            gradient_penalty(D, x, weight, reduction=reduction)
        else:
            grad_norm_penalty(torch.randn(4, 3), torch.randn(4), weight, reduction)


def test_a_callable_weight_of_shape_b_still_runs():
    D = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    got, _ = gradient_penalty(D, x, lambda p: torch.sigmoid(p) ** 2)
    want, _ = gradient_penalty(D, x, "js_fake")
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("mode", ["mlp", "auto"])
def test_closed_form_modes_on_meta_tensors(mode):
    """autocast does not know the meta device: asking it whether it is on raised a RuntimeError."""
    D = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1)).to("meta")
    pen, logits = gradient_penalty(D, torch.randn(4, 3, device="meta"), "js_real", mode=mode)
    assert pen.is_meta and logits.shape == (4,)
    assert not _dispatch.autocast_enabled(torch.device("meta"))


@pytest.mark.parametrize("bad", [[1, 0, 7], [-1, 0, 0], [1, -3, 0]])
def test_a_raw_cpu_state_is_checked_like_set_state(bad):
    """ticket != 0 made the triton and cuda kernels draw the same noise on every call."""
    with pytest.raises(ValueError, match=r"state must be \[seed >= 0, offset >= 0, 0\]"):
        noisy_clean_batch(torch.zeros(4, 3), None, 1.0, state=torch.tensor(bad))


def test_a_raw_cpu_state_advances():
    st = torch.tensor([1, 0, 0])
    a = noisy_clean_batch(torch.zeros(4, 3), None, 1.0, state=st)[0]
    b = noisy_clean_batch(torch.zeros(4, 3), None, 1.0, state=st)[0]
    assert st[1] > 0 and not torch.equal(a, b)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", None])
def test_default_noise_state_names_a_bad_device(device):
    with pytest.raises(ValueError, match="device"):
        default_noise_state(device)


def test_fake_reference_agrees_on_shapes():
    """The reference denoiser on the same fake inputs gives the custom ops' shapes (the fake kernels are right)."""
    w, b, g, be, rm, rv = _layers()
    with FakeTensorMode(allow_non_fake_inputs=True):
        h = torch.randn(5, 4)
        got = denoiser_loss(h, w, b, g, be, rm, rv, training=False, reduction="none")
        net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 4)).eval()
        want = ref.denoiser_loss(net, h, torch.randn(5, 4), reduction="none")
    assert got.shape == want.shape == (5,)
