"""Fused DFM denoiser (fastgan.ops.Denoiser, denoiser_loss, denoiser_generator_loss, bn_relu) against the
naive nn.Sequential reference (fastgan/reference/denoiser.py)."""
import copy

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from fastgan.ops import Denoiser, bn_relu, denoiser_generator_loss, denoiser_loss
from fastgan.ops import _dispatch
from fastgan.ops import denoiser_eager as de
from fastgan.ops.denoiser_backends import _KERNELS
from fastgan.reference import denoiser as ref

from denoiser_helpers import CPU_BACKENDS, assert_within_twice, delta, layer_inputs, make_pair, state
from helpers import gpu_division


# ---------------------------------------------------------------- exactness against the reference (float64)

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("training", [True, False])
def test_loss_matches_reference_float64(backend, training):
    den, net = make_pair(backend=backend, training=training)
    h = torch.randn(10, 12, dtype=torch.float64)
    noise = torch.randn_like(h)
    before = dict(_dispatch.counts)
    loss = den.loss(h, noise)
    loss.backward()
    assert delta(before) == {("denoiser_loss", backend): 1, ("denoiser_loss_backward", backend): 1}
    expected = ref.denoiser_loss(net, h, noise)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    got, want = state(den.net), state(net)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("training", [True, False])
def test_weights_stored_transposed(backend, training):
    """Linear weights that are strided views (column-major storage, as a weight tied to another layer's .t() is):
    the loss, its gradients and the forward match the reference's (the Triton GEMMs indexed W as dense rows)."""
    den, net = make_pair(backend=backend, training=training)
    for m in (den, net):
        for lin in (x for x in m.modules() if isinstance(x, nn.Linear)):
            lin.weight = nn.Parameter(lin.weight.detach().t().contiguous().t())
            assert not lin.weight.is_contiguous()
    h = torch.randn(10, 12, dtype=torch.float64)
    noise = torch.randn_like(h)
    loss = den.loss(h, noise)
    loss.backward()
    expected = ref.denoiser_loss(net, h, noise)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    got, want = state(den.net), state(net)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12, msg=k)
    with torch.no_grad():
        torch.testing.assert_close(den(h), net(h), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sigma_scales_the_corruption(backend):
    den, net = make_pair(backend=backend)
    den.sigma = 0.3
    h = torch.randn(6, 12, dtype=torch.float64)
    noise = torch.randn_like(h)
    torch.testing.assert_close(den.loss(h, noise), ref.denoiser_loss(net, h, noise, sigma=0.3), rtol=1e-12, atol=0)


# ---------------------------------------------------------------- float32: within 2x the reference's own error

def _fp32_errors(backend, training):
    """Max abs error against the float64 reference of (fused fp32, reference fp32) for the loss, every
    parameter gradient and every buffer after one step; plus the scale of each float64 value."""
    master, _ = make_pair(n=16, hidden=24, depth=2, dtype=torch.float64, training=training, seed=3)
    master.float().double()  # the truth is float64 on the float32 inputs: rounding them is no kernel's error
    g = torch.Generator().manual_seed(4)
    h = (torch.randn(32, 16, generator=g, dtype=torch.float64) * 2 + 0.5).float().double()
    noise = torch.randn(32, 16, generator=g, dtype=torch.float64).float().double()
    truth_net = copy.deepcopy(master.net)
    truth_loss = ref.denoiser_loss(truth_net, h, noise)
    truth_loss.backward()
    truth = {"loss": truth_loss.detach(), **state(truth_net)}

    fused = Denoiser.from_sequential(copy.deepcopy(master.net).float(), backend=backend)
    fused.train(training)
    loss = fused.loss(h.float(), noise.float())
    loss.backward()
    got = {"loss": loss.detach(), **state(fused.net)}

    ref_net = copy.deepcopy(master.net).float()
    ref_loss = ref.denoiser_loss(ref_net, h.float(), noise.float())
    ref_loss.backward()
    base = {"loss": ref_loss.detach(), **state(ref_net)}
    return truth, got, base


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("training", [True, False])
def test_fp32_error_within_twice_reference_error(backend, training):
    truth, got, base = _fp32_errors(backend, training)
    assert got.keys() == truth.keys() == base.keys()
    for k, t in truth.items():
        if t.dtype == torch.int64:  # num_batches_tracked
            assert torch.equal(got[k], t) and torch.equal(base[k], t), k
            continue
        assert_within_twice(k, got[k], base[k], t)


@pytest.mark.parametrize("ulps", [-2, 2])
@pytest.mark.parametrize("training", [True, False])
def test_fp32_with_a_gpus_division_triton(monkeypatch, ulps, training):
    """The Triton layer kernels with float32 `/` rounded as a GPU may (div.full, within 2 ulp; helpers.gpu_division):
    still within 2x the reference's error (their statistics are float64, whose division is exact there)."""
    gpu_division(monkeypatch, ulps)
    test_fp32_error_within_twice_reference_error("triton", training)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mean", [1e4, 1e5, 1e6])
@pytest.mark.parametrize("shape", [(64, 512), (256, 64)])
def test_bn_relu_statistics_of_features_far_from_zero(backend, mean, shape):
    """Features of mean + N(0, 1) (pre-activations far off centre): the cpu kernel added 8 rows in float32 and
    centred the squares on the float32-rounded mean, so they gained B (mean error)^2: invstd 2-4x (1e4) to 2e4x
    (1e6) torch's float32 error, and the running variance with it. Against torch's float32 BatchNorm, both on
    float64 truths of the same float32 inputs."""
    g = torch.Generator().manual_seed(0)
    y = (mean + torch.randn(*shape, generator=g, dtype=torch.float64)).float()
    N = shape[1]
    gamma, beta, rm, rv = torch.ones(N), torch.zeros(N), torch.zeros(N), torch.ones(N)
    _, _, invstd, _, rv_new = torch.ops.fastgan.bn_relu(y, None, gamma, beta, rm, rv, True, 0.1, 1e-5, False, backend)
    rstd = lambda v: 1 / torch.sqrt(torch.var_mean(v, 0, unbiased=False)[0] + 1e-5)  # noqa: E731
    assert_within_twice("invstd", invstd, rstd(y), rstd(y.double()))
    want = {}
    for dt in (torch.float32, torch.float64):
        rm_t, rv_t = rm.to(dt), rv.to(dt)
        torch.nn.functional.batch_norm(y.to(dt), rm_t, rv_t, None, None, True, 0.1, 1e-5)
        want[dt] = rv_t
    assert_within_twice("running_var", rv_new, want[torch.float32], want[torch.float64])


# ---------------------------------------------------------------- gradcheck / gradgradcheck (float64)

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("training", [True, False])
def test_bn_relu_gradcheck(backend, training):
    y, bias, gamma, beta, rm, rv = layer_inputs()
    fn = lambda *a: bn_relu(*a, rm.clone(), rv.clone(), training=training, backend=backend)
    before = dict(_dispatch.counts)
    assert gradcheck(fn, (y, bias, gamma, beta))
    assert delta(before)[("bn_relu_backward", backend)] > 0
    if backend != "triton":  # second order recomputes in torch whatever the backend; once is enough
        assert gradgradcheck(fn, (y, bias, gamma, beta))


@pytest.mark.parametrize("training", [True, False])
def test_bn_relu_matches_torch_and_updates_running_stats(training):
    y, bias, gamma, beta, rm, rv = layer_inputs(B=7, N=5)
    rm2, rv2 = rm.clone(), rv.clone()
    out = bn_relu(y, bias, gamma, beta, rm, rv, training=training, momentum=0.2)
    want = torch.relu(torch.nn.functional.batch_norm(y + bias, rm2, rv2, gamma, beta, training, 0.2, 1e-5))
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rm, rm2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv, rv2, rtol=1e-12, atol=1e-12)
    plain = bn_relu(y, bias, gamma, beta, rm, rv, training=training, relu=False)
    assert (plain < 0).any()  # relu=False really skips the ReLU


def _functional_params(depth=1, F=3, H=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
    weights, biases, gammas, betas, width = [], [], [], [], F
    for _ in range(depth):
        weights.append(mk(H, width))
        biases.append(mk(H))
        gammas.append((torch.rand(H, generator=g, dtype=torch.float64) + 0.5).requires_grad_())
        betas.append(mk(H))
        width = H
    weights.append(mk(F, width))
    biases.append(mk(F))
    rms = [torch.randn(H, generator=g, dtype=torch.float64) for _ in range(depth)]
    rvs = [torch.rand(H, generator=g, dtype=torch.float64) + 0.5 for _ in range(depth)]
    return weights, biases, gammas, betas, rms, rvs


@pytest.mark.parametrize("training", [True, False])
def test_whole_loss_gradcheck_wrt_inputs_and_parameters(training):
    depth = 2
    weights, biases, gammas, betas, rms, rvs = _functional_params(depth=depth)
    g = torch.Generator().manual_seed(2)
    h = torch.randn(5, 3, generator=g, dtype=torch.float64).requires_grad_()
    noise = torch.randn(5, 3, generator=g, dtype=torch.float64).requires_grad_()
    n_w = depth + 1

    def fn(h, noise, *p):
        w, b = list(p[:n_w]), list(p[n_w:2 * n_w])
        ga, be = list(p[2 * n_w:2 * n_w + depth]), list(p[2 * n_w + depth:])
        return denoiser_loss(h, w, b, ga, be, [r.clone() for r in rms], [v.clone() for v in rvs], noise=noise,
                             sigma=0.7, training=training, reduction="none", backend="cpu")

    inputs = (h, noise, *weights, *biases, *gammas, *betas)
    before = dict(_dispatch.counts)
    assert gradcheck(fn, inputs)
    assert delta(before)[("denoiser_loss_backward", "cpu")] > 0
    if training:  # second order: a single fast-mode check keeps the file's time budget
        assert gradgradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_recon_loss_adds_the_bias_before_the_target(backend):
    """(y + b) - t in float32, the reference's order: with y = 1e8, b = -1e8 the bias cancels y exactly and the
    target's 1 survives ((y - t) + b rounds the 1 away)."""
    y = torch.tensor([[1e8, 3.0]])
    b = torch.tensor([-1e8, 0.5])
    t = torch.tensor([[1.0, 3.25]])
    want = ((y + b) - t).pow(2).sum(1)
    got = torch.ops.fastgan.recon_loss(y, b, t, backend)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_recon_loss_op_gradcheck():
    g = torch.Generator().manual_seed(5)
    y, b, t = (torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for s in ((4, 3), (3,), (4, 3)))
    fn = lambda y, b, t: torch.ops.fastgan.recon_loss(y, b, t, "cpu")
    assert gradcheck(fn, (y, b, t))
    assert gradgradcheck(fn, (y, b, t))


def test_compile_path_custom_ops(monkeypatch):
    """Under torch.compile the functional custom ops run instead of the eager autograd.Functions; they
    must give the same values, gradients and running stats, and pass torch.library.opcheck."""
    den, net = make_pair(training=True)
    h = torch.randn(8, 12, dtype=torch.float64)
    noise = torch.randn_like(h)
    hf = torch.randn(8, 12, dtype=torch.float64, requires_grad=True)
    den.loss(h, noise).backward()
    den.generator_loss(hf).backward()
    eager = {**state(den.net), "hf": hf.grad.clone()}

    den2 = Denoiser.from_sequential(net, backend="cpu")
    hf2 = hf.detach().clone().requires_grad_()
    monkeypatch.setattr(de, "_compiling", lambda: True)

    def eager_function_applied(*args, **kwargs):
        raise AssertionError("an eager autograd.Function ran where the custom ops should")

    for fn in (de._EagerLoss, de._EagerRecon, de._EagerForward):
        monkeypatch.setattr(fn, "apply", eager_function_applied)
    before = dict(_dispatch.counts)
    den2.loss(h, noise).backward()
    den2.generator_loss(hf2).backward()
    d = delta(before)
    assert d[("denoiser_loss", "cpu")] == 1 and d[("denoiser_forward", "cpu")] == 1 and d[("recon_loss", "cpu")] == 1
    compiled = {**state(den2.net), "hf": hf2.grad}
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-12, atol=1e-14, msg=k)

    w, b, g, be, rm, rv = (list(x) for x in den2._params())
    w = [x.detach().requires_grad_() for x in w]
    args = (h, noise, 1.0, w, b, g, be, rm, rv, True, 0.1, 1e-5, "cpu")
    torch.library.opcheck(torch.ops.fastgan.denoiser_loss.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_torch_compile_fullgraph():
    """torch.compile captures the whole loss and generator term without graph breaks (aot_eager: the
    custom ops' fake kernels and backward ops are traced; no inductor build, to keep this test fast)."""
    den, net = make_pair()
    h = torch.randn(8, 12, dtype=torch.float64)
    noise = torch.randn_like(h)
    hf = torch.randn(8, 12, dtype=torch.float64, requires_grad=True)
    step = torch.compile(lambda h, noise, hf: den.loss(h, noise) + den.generator_loss(hf), fullgraph=True,
                         backend="aot_eager")
    before = dict(_dispatch.counts)
    step(h, noise, hf).backward()
    d = delta(before)
    assert d[("denoiser_loss", "cpu")] == 1 and d[("denoiser_loss_backward", "cpu")] == 1
    hf2 = hf.detach().clone().requires_grad_()
    (ref.denoiser_loss(net, h, noise) + ref.generator_loss(net, hf2)).backward()
    torch.testing.assert_close(hf.grad, hf2.grad, rtol=1e-10, atol=1e-12)
    for k, v in state(net).items():
        torch.testing.assert_close(state(den.net)[k], v, rtol=1e-10, atol=1e-12, msg=k)


def test_autocast_runs_in_the_parameter_dtype():
    den, net = make_pair(dtype=torch.float32)
    h = torch.randn(8, 12)
    noise = torch.randn_like(h)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = den.loss(h, noise)
        r = den(h.bfloat16())
    assert loss.dtype == r.dtype == torch.float32
    torch.testing.assert_close(loss, ref.denoiser_loss(net, h, noise), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="parameters must be float32 or float64"):
        den.half().loss(h)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32])
def test_a_half_or_integer_dtype_is_refused_at_construction(dtype):
    with pytest.raises(TypeError, match=r"^dtype must be torch.float32 or torch.float64 .*, got " + str(dtype)):
        Denoiser(4, dtype=dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("path", ["eager", "custom_ops"])
@pytest.mark.parametrize("term", ["loss", "forward"])
def test_backward_inside_autocast(backend, path, term, monkeypatch):
    """backward() called inside the autocast region, as training loops write it: autograd runs the backward under
    autocast, whose half GEMM products the kernels read as float32 (the process died). The gradients are the
    float32 ones computed outside autocast; but the custom ops' forward (under torch.compile) differentiates its
    GEMMs with torch's own mm backward, which autocast runs in bfloat16 as it would for any float32 mm."""
    if path == "custom_ops":
        monkeypatch.setattr(de, "_compiling", lambda: True)

    def step(autocast):
        den, _ = make_pair(dtype=torch.float32, backend=backend)
        torch.manual_seed(1)
        h, noise = torch.randn(8, 12), torch.randn(8, 12)
        hf, hr = torch.randn(8, 12, requires_grad=True), torch.randn(8, 12, requires_grad=True)
        y = torch.randn(8, 16, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if term == "loss":
                (den.loss(h, noise) + den.generator_loss(hf)).backward()
                bn_relu(y, None, den.norms[0].weight, den.norms[0].bias, backend=backend).pow(2).sum().backward()
                return [hf.grad, y.grad] + [p.grad for p in den.parameters()]
            den(hr).pow(2).mean().backward()
            return [hr.grad] + [p.grad for p in den.parameters()]
    want, got = step(False), step(True)
    tol = 3e-2 if (term, path) == ("forward", "custom_ops") else 1e-5
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=tol, atol=tol * w.abs().max().item())


# ---------------------------------------------------------------- DFM semantics

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("training", [True, False])
def test_generator_loss_target_is_constant(backend, training):
    den, net = make_pair(backend=backend, training=training)
    buffers = {k: b.clone() for k, b in den.named_buffers()}
    hf = torch.randn(9, 12, dtype=torch.float64, requires_grad=True)
    hf_ref = hf.detach().clone().requires_grad_()
    loss = den.generator_loss(hf)
    loss.backward()
    expected = ref.generator_loss(net, hf_ref)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hf.grad, hf_ref.grad, rtol=1e-10, atol=1e-12)
    # the gradient is that of a fixed target: 2 (h - r(h)) / B, and nothing reaches r
    with torch.no_grad():
        target = ref.forward_without_update(net, hf)
    torch.testing.assert_close(hf.grad, 2 * (hf.detach() - target) / hf.shape[0], rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in den.parameters())
    for k, b in den.named_buffers():  # no running-stat update, no batch counted
        assert torch.equal(b, buffers[k]), k


def test_generator_loss_uses_the_fake_batch_statistics():
    den, net = make_pair(training=True)
    hf = torch.randn(9, 12, dtype=torch.float64) * 3 + 2
    with torch.no_grad():
        per_batch = ref.forward_without_update(net, hf)
        net.eval()
        running = net(hf)
    loss = den.generator_loss(hf, reduction="none")
    torch.testing.assert_close(loss, (hf - per_batch).pow(2).sum(1), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(loss, (hf - running).pow(2).sum(1))


def test_loss_detaches_h_by_default():
    den, net = make_pair()
    h = torch.randn(6, 12, dtype=torch.float64, requires_grad=True)
    noise = torch.randn_like(h)
    den.loss(h, noise).backward()
    assert h.grad is None
    den.loss(h, noise, detach=False).backward()
    h2 = h.detach().clone().requires_grad_()
    ref.denoiser_loss(net, h2, noise).backward()
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-10, atol=1e-12)


def test_reductions_and_normalisation():
    den, _ = make_pair()
    h = torch.randn(6, 12, dtype=torch.float64)
    noise = torch.randn_like(h)
    den.eval()  # no running-stat update, so the three calls see the same network
    per = den.loss(h, noise, reduction="none")
    assert per.shape == (6,)
    torch.testing.assert_close(den.loss(h, noise), per.mean())  # mean over the batch, sum over features
    torch.testing.assert_close(den.loss(h, noise, reduction="sum"), per.sum())


def test_eval_mode_leaves_buffers_alone():
    den, net = make_pair(training=False)
    buffers = {k: b.clone() for k, b in den.named_buffers()}
    h = torch.randn(1, 12, dtype=torch.float64)  # a batch of one is fine in eval mode
    den.loss(h).backward()
    den(h)
    for k, b in den.named_buffers():
        assert torch.equal(b, buffers[k]), k


def test_cumulative_momentum_none_matches_batchnorm():
    torch.manual_seed(0)
    den = Denoiser(6, 8, 2, momentum=None, dtype=torch.float64)
    net = copy.deepcopy(den.net)
    for step in range(3):
        h = torch.randn(5, 6, dtype=torch.float64) + step
        noise = torch.randn_like(h)
        den.loss(h, noise)
        ref.denoiser_loss(net, h, noise)
    for (k, a), (_, b) in zip(den.net.named_buffers(), net.named_buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=k)


@pytest.mark.parametrize("training", [True, False])
def test_forward_matches_sequential(training):
    den, net = make_pair(training=training)
    h = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    h2 = h.detach().clone().requires_grad_()
    before = dict(_dispatch.counts)
    r = den(h)
    assert delta(before) == {("denoiser_forward", "cpu"): 1}  # with gradients: the whole network, one Function
    before = dict(_dispatch.counts)
    r.pow(2).sum().backward()
    assert delta(before) == {("denoiser_forward_backward", "cpu"): 1}
    net(h2).pow(2).sum().backward()
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-10, atol=1e-12)
    for k, v in state(net).items():
        torch.testing.assert_close(state(den.net)[k], v, rtol=1e-10, atol=1e-12, msg=k)
    before = dict(_dispatch.counts)
    with torch.no_grad():
        torch.testing.assert_close(den(h), net(h), rtol=1e-12, atol=1e-12)
    assert delta(before) == {("denoiser_forward", "cpu"): 1}  # without: the whole-network op


def test_from_sequential_shares_parameters_and_state_dict_keys():
    net = ref.make_denoiser(5, 7, 2)
    den = Denoiser.from_sequential(net)
    assert den.net is net and den.depth == 2 and den.n_features == 5
    assert set(Denoiser(5, 7, 2).state_dict()) == {f"net.{k}" for k in net.state_dict()}


# ---------------------------------------------------------------- backends and errors

def test_auto_backend_on_cpu_is_the_cpp_kernel():
    den, _ = make_pair(backend=None)
    before = dict(_dispatch.counts)
    den.loss(torch.randn(4, 12, dtype=torch.float64)).backward()
    den.generator_loss(torch.randn(4, 12, dtype=torch.float64, requires_grad=True)).backward()
    assert delta(before) == {("denoiser_loss", "cpu"): 1, ("denoiser_loss_backward", "cpu"): 1,
                             ("denoiser_forward", "cpu"): 1, ("recon_loss", "cpu"): 1,
                             ("recon_loss_backward", "cpu"): 1}


def test_unavailable_backend_raises_instead_of_falling_back():
    den, _ = make_pair(backend="cuda")
    with pytest.raises(_dispatch.BackendUnavailable, match="cuda"):
        den.loss(torch.randn(4, 12, dtype=torch.float64))


def test_double_backward_goes_through_torch_and_says_so():
    den, net = make_pair()
    h = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    noise = torch.randn_like(h)
    before = dict(_dispatch.counts)
    (g,) = torch.autograd.grad(den.loss(h, noise, detach=False), h, create_graph=True)
    assert delta(before)[("denoiser_loss_backward", "reference")] == 1
    h2 = h.detach().clone().requires_grad_()
    (g2,) = torch.autograd.grad(ref.denoiser_loss(net, h2, noise), h2, create_graph=True)
    torch.testing.assert_close(g, g2, rtol=1e-10, atol=1e-12)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), h)
    (gg2,) = torch.autograd.grad(g2.pow(2).sum(), h2)
    torch.testing.assert_close(gg, gg2, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("call, exc, match", [
    (lambda d: d.loss(torch.randn(4, 11, dtype=torch.float64)), ValueError, r"^h must have shape \(B, 12\)"),
    (lambda d: d.loss(torch.randn(4, 12, 1, dtype=torch.float64)), ValueError, "^h must have shape"),
    (lambda d: d.loss(torch.ones(4, 12, dtype=torch.int64)), TypeError, "^h must be a floating tensor"),
    (lambda d: d.loss([[0.0] * 12] * 4), TypeError, "^h must be a torch.Tensor"),
    (lambda d: d.loss(torch.randn(1, 12, dtype=torch.float64)), ValueError, "^h: training-mode BatchNorm"),
    (lambda d: d.loss(torch.randn(4, 12, dtype=torch.float64, device="meta")), ValueError, "^h is on meta"),
    (lambda d: d.loss(torch.randn(4, 12, dtype=torch.float64), torch.randn(4, 11)), ValueError, "^noise must"),
    (lambda d: d.loss(torch.randn(4, 12, dtype=torch.float64), reduction="avg"), ValueError, "^reduction must"),
    (lambda d: d.generator_loss(torch.randn(4, 3, dtype=torch.float64)), ValueError, "^h_fake must have shape"),
    (lambda d: d.generator_loss(torch.randn(4, 12), reduction="max"), ValueError, "^reduction must"),
])
def test_bad_module_inputs(call, exc, match):
    den, _ = make_pair()
    with pytest.raises(exc, match=match):
        call(den)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="^sigma must be >= 0"):
        Denoiser(4, sigma=-1.0)
    with pytest.raises(TypeError, match="^sigma must be a real number"):
        Denoiser(4, sigma="1")
    with pytest.raises(ValueError, match="^depth must be >= 0"):
        Denoiser(4, depth=-1)
    with pytest.raises(TypeError, match="^n_features must be an int"):
        Denoiser(4.0)
    with pytest.raises(ValueError, match="^momentum must be"):
        Denoiser(4, momentum=1.5)
    with pytest.raises(ValueError, match="^eps must be > 0"):
        Denoiser(4, eps=0.0)
    with pytest.raises(ValueError, match="^backend must be one of"):
        Denoiser(4, backend="gpu")
    with pytest.raises(ValueError, match=r"^net\[1\] must be BatchNorm1d"):
        Denoiser.from_sequential(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 3)))
    with pytest.raises(ValueError, match="reconstructs its input"):
        Denoiser.from_sequential(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(TypeError, match="^net must be an nn.Sequential"):
        Denoiser.from_sequential(nn.Linear(3, 3))


def test_bad_functional_inputs():
    weights, biases, gammas, betas, rms, rvs = _functional_params(depth=1)
    h = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^weights\[1\] must have shape \(3, 4\)"):
        denoiser_loss(h, [weights[0], weights[1][:, :3]], biases, gammas, betas)
    with pytest.raises(ValueError, match="^gammas must have 1 entries"):
        denoiser_loss(h, weights, biases, [], betas)
    with pytest.raises(TypeError, match=r"^biases\[0\] has dtype torch.float32"):
        denoiser_loss(h, weights, [biases[0].float(), biases[1]], gammas, betas)
    with pytest.raises(ValueError, match="^running_means and running_vars are required in eval mode"):
        denoiser_loss(h, weights, biases, gammas, betas, training=False)
    with pytest.raises(ValueError, match="^momentum must be"):
        denoiser_loss(h, weights, biases, gammas, betas, momentum=-0.1)
    with pytest.raises(ValueError, match="^h_fake must have shape"):
        denoiser_generator_loss(h[:, :2], weights, biases, gammas, betas)
    y = torch.randn(4, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="^gamma must be a tensor"):
        bn_relu(y, None, None, betas[0])
    with pytest.raises(ValueError, match=r"^bias must have shape \(4,\)"):
        bn_relu(y, torch.zeros(3, dtype=torch.float64), gammas[0], betas[0])
    with pytest.raises(ValueError, match="^running_mean and running_var must be given together"):
        bn_relu(y, None, gammas[0], betas[0], rms[0], None)


def test_functional_loss_matches_reference_and_updates_running_stats():
    weights, biases, gammas, betas, rms, rvs = _functional_params(depth=2)
    rms2, rvs2 = [r.clone() for r in rms], [v.clone() for v in rvs]
    h = torch.randn(6, 3, dtype=torch.float64)
    noise = torch.randn_like(h)
    got = denoiser_loss(h, weights, biases, gammas, betas, rms, rvs, noise=noise, momentum=0.3)
    want = ref.functional_denoiser_loss(h, noise, 1.0, weights, biases, gammas, betas, rms2, rvs2, True, 0.3)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(rms + rvs, rms2 + rvs2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- as an outside user would

def test_training_loop_like_a_user():
    """A user's own feature extractor and generator; DFM as in the paper: the denoiser trains on real
    features, the generator gets lambda * generator_loss with lambda = 0.03 / n_h."""
    torch.manual_seed(0)
    n_h = 16
    phi = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, n_h), nn.LeakyReLU(0.2))
    G = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
    den = Denoiser(n_h, depth=2)
    opt_r = torch.optim.Adam(den.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.5, 0.999))
    start = [p.detach().clone() for p in den.parameters()]
    g_start = [p.detach().clone() for p in G.parameters()]
    losses = []
    for _ in range(30):
        real = torch.randn(64, 2) * 0.5 + torch.tensor([1.0, -1.0])
        opt_r.zero_grad()
        loss = den.loss(phi(real))  # features detached by default: trains r only
        loss.backward()
        opt_r.step()
        losses.append(loss.item())

        opt_g.zero_grad()
        opt_r.zero_grad(set_to_none=True)
        g_loss = den.lambda_denoise * den.generator_loss(phi(G(torch.randn(64, 4))))
        g_loss.backward()
        assert all(p.grad is None for p in den.parameters())  # r gets nothing from G's loss
        opt_g.step()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])
    for (name, p), a in zip(den.named_parameters(), start):
        assert torch.isfinite(p).all(), name
        # a hidden Linear's bias cancels in training-mode BatchNorm: its gradient is exactly zero
        hidden_bias = name.endswith("bias") and isinstance(den.net[int(name.split(".")[1])], nn.Linear) \
            and name != f"net.{len(den.net) - 1}.bias"
        assert torch.equal(a, p) == hidden_bias, name
    assert any(not torch.equal(a, p) for a, p in zip(g_start, G.parameters()))
    assert all(m.num_batches_tracked.item() == 30 for m in den.norms)
    assert den.lambda_denoise == 0.03 / n_h


# ---------------------------------------------------------------- CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("training", [True, False])
def test_cuda_matches_reference_float64(backend, training):
    den, net = make_pair(n=40, hidden=72, depth=3, backend=backend, training=training)
    den, net = den.cuda(), net.cuda()
    h = torch.randn(70, 40, dtype=torch.float64, device="cuda")
    noise = torch.randn_like(h)
    before = dict(_dispatch.counts)
    loss = den.loss(h, noise)
    loss.backward()
    hf = torch.randn(70, 40, dtype=torch.float64, device="cuda", requires_grad=True)
    den.generator_loss(hf).backward()
    d = delta(before)
    assert d[("denoiser_loss", backend)] == 1 and d[("denoiser_loss_backward", backend)] == 1
    assert d[("denoiser_forward", backend)] == 1 and d[("recon_loss_backward", backend)] == 1
    expected = ref.denoiser_loss(net, h, noise)
    expected.backward()
    hf2 = hf.detach().clone().requires_grad_()
    ref.generator_loss(net, hf2).backward()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(hf.grad, hf2.grad, rtol=1e-9, atol=1e-11)
    for k, v in state(net).items():
        torch.testing.assert_close(state(den.net)[k], v, rtol=1e-9, atol=1e-11, msg=k)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("training", [True, False])
def test_cuda_fp32_error_within_twice_reference_error(backend, training, set_matmul_tf32):
    set_matmul_tf32(False)  # both sides use the same GEMMs
    master, _ = make_pair(n=48, hidden=96, depth=3, training=training, seed=7)
    master = master.float().double().cuda()  # float64 truth of the float32 inputs, not of their originals
    g = torch.Generator(device="cuda").manual_seed(8)
    h = (torch.randn(200, 48, generator=g, dtype=torch.float64, device="cuda") * 2 + 0.5).float().double()
    noise = torch.randn(200, 48, generator=g, dtype=torch.float64, device="cuda").float().double()
    truth_net = copy.deepcopy(master.net)
    tl = ref.denoiser_loss(truth_net, h, noise)
    tl.backward()
    fused = Denoiser.from_sequential(copy.deepcopy(master.net).float(), backend=backend).train(training)
    fl = fused.loss(h.float(), noise.float())
    fl.backward()
    ref_net = copy.deepcopy(master.net).float()
    rl = ref.denoiser_loss(ref_net, h.float(), noise.float())
    rl.backward()
    truth, got, base = ({"loss": tl.detach(), **state(truth_net)}, {"loss": fl.detach(), **state(fused.net)},
                        {"loss": rl.detach(), **state(ref_net)})
    for k, t in truth.items():
        if t.dtype != torch.int64:
            assert_within_twice(k, got[k], base[k], t)


@pytest.mark.cuda
def test_cuda_auto_backend_and_bn_relu_gradcheck():
    den, _ = make_pair(backend=None)
    den = den.cuda()
    before = dict(_dispatch.counts)
    den.loss(torch.randn(8, 12, dtype=torch.float64, device="cuda")).backward()
    assert delta(before)[("denoiser_loss", "cuda")] == 1
    y, bias, gamma, beta, rm, rv = (t.cuda().detach().requires_grad_(t.requires_grad) for t in layer_inputs())
    for training in (True, False):
        fn = lambda *a: bn_relu(*a, rm.clone(), rv.clone(), training=training, backend="cuda")
        assert gradcheck(fn, (y, bias, gamma, beta))


def test_the_layer_backward_refuses_a_gradient_of_another_dtype():
    """The C++ kernels read every pointer in the layer's dtype: a half gradient (a GEMM autocast to half) would
    be read past its end, so the launch refuses it, naming both dtypes."""
    from fastgan.ops import denoiser_net
    from fastgan.ops.denoiser_backends import _KERNELS

    y = torch.randn(4, 6)
    gamma, shift, invstd = torch.ones(6), torch.zeros(6), torch.ones(6)
    with pytest.raises(TypeError, match=r"incoming gradient is torch\.bfloat16, the layer's output torch\.float32"):
        denoiser_net._layer_backward(_KERNELS["cpu"], y.bfloat16(), y.relu(), y, gamma, shift, invstd, True, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_recon_loss_rows_wider_than_a_chunk(dtype):
    """The CPU kernel sums a row in 64 lanes and passes of 512 columns; the other tests' rows are <= 12 wide."""
    g = torch.Generator().manual_seed(7)
    y, t = (torch.randn(5, 600, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
    b = torch.randn(600, generator=g, dtype=torch.float64).to(dtype)
    got = torch.ops.fastgan.recon_loss(y, b, t, "cpu")
    want = ((y.double() + b.double()) - t.double()).pow(2).sum(1).to(dtype)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_corrupt_covers_every_block(dtype, backend):
    """h + sigma * noise (sigma rounded to the dtype first, as torch's) over 15000 elements, more than the other
    tests corrupt: the C++ kernel's blocks of 4096, the last ragged; Triton's programs of 1024. Every element
    written, bit for bit."""
    g = torch.Generator().manual_seed(8)
    h, noise = (torch.randn(3, 5000, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
    out = torch.full_like(h, float("nan"))
    _KERNELS[backend].corrupt(h, noise, 0.3, out)
    torch.testing.assert_close(out, h + torch.tensor(0.3, dtype=dtype) * noise, rtol=0, atol=0)


@pytest.mark.parametrize("running", [False, True], ids=["no_running_stats", "running_stats"])
def test_bn_relu_refuses_a_single_sample_in_training_mode(running):
    """As nn.BatchNorm1d ("Expected more than 1 value per channel when training"): one sample has no batch
    variance, the output would be beta and the running variance would take a 0 (unbiased over max(B - 1, 1))."""
    y = torch.randn(1, 4, dtype=torch.float64)
    p = [torch.randn(4, dtype=torch.float64) for _ in range(3)]
    rm, rv = (torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)) if running else (None, None)
    with pytest.raises(ValueError, match="^y: training-mode BatchNorm needs a batch of at least 2 samples, got 1"):
        bn_relu(y, *p, rm, rv, training=True, backend="reference")
    if running:
        assert torch.equal(rm, torch.zeros(4, dtype=torch.float64))
        assert torch.equal(rv, torch.ones(4, dtype=torch.float64))
    # eval mode normalises with the running statistics: one sample is fine there
    if running:
        bn_relu(y, *p, rm, rv, training=False, backend="reference")


def test_functional_reference_corrupts_with_sigma():
    # eq. 5 with C(h) = h + sigma n written out on the nn modules: mean_i ||h_i - r(h_i + sigma n_i)||^2
    torch.manual_seed(0)
    net = ref.make_denoiser(3, 4, depth=2).double()
    lin = [m for m in net if isinstance(m, nn.Linear)]
    bns = [m for m in net if isinstance(m, nn.BatchNorm1d)]
    h = torch.randn(6, 3, dtype=torch.float64)
    noise = torch.randn_like(h)
    want = (h - net(h + 0.3 * noise)).pow(2).sum(1).mean()
    got = ref.functional_denoiser_loss(h, noise, 0.3, [m.weight for m in lin], [m.bias for m in lin],
                                       [b.weight for b in bns], [b.bias for b in bns], None, None, True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend,gemm", [(b, "torch") for b in CPU_BACKENDS] + [("triton", "tl.dot")])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_hidden_biases_get_exact_zeros_beside_non_finite_features(backend, gemm, bad, monkeypatch):
    """Training-mode BatchNorm cancels a hidden Linear's bias, so its gradient is 0 (docs/ops/denoiser.md) also
    where a feature is NaN or inf: Triton stored s1 * 0, NaN there, on both GEMM paths (an audit, 2026-12-06)."""
    monkeypatch.setenv("FASTGAN_DENOISER_TRITON_GEMM", gemm)
    torch.manual_seed(11)
    den = Denoiser(3, 4, 2, dtype=torch.float64)
    den.backend = backend
    h = torch.randn(4, 3, dtype=torch.float64)
    h[2, 1] = bad
    before = _dispatch.counts[("denoiser_loss", backend)]
    den.loss(h, torch.randn(4, 3, dtype=torch.float64)).backward()
    assert _dispatch.counts[("denoiser_loss", backend)] == before + 1
    hidden = [m for m in den.net[:-1] if isinstance(m, nn.Linear)]
    assert len(hidden) == 2 and all(torch.equal(m.bias.grad, torch.zeros(4, dtype=torch.float64)) for m in hidden)


@pytest.mark.parametrize("backend,gemm", [(b, "torch") for b in CPU_BACKENDS] + [("triton", "tl.dot")])
def test_an_infinite_running_variance_in_eval_mode(backend, gemm, monkeypatch):
    """rsqrt(inf) is 0 in torch: the feature's normalized value is 0 (times gamma, plus beta). The fused tl.dot
    GEMMs refined the hardware's rsqrt by Newton steps, inf * 0 = NaN there, and the loss read NaN (a Triton
    review, 2026-12-07)."""
    from denoiser_helpers import make_pair

    monkeypatch.setenv("FASTGAN_DENOISER_TRITON_GEMM", gemm)
    den, net = make_pair(4, 6, 1, dtype=torch.float32, backend=backend, training=False)
    with torch.no_grad():
        den.net[1].running_var[0] = float("inf")
        net[1].running_var[0] = float("inf")
    torch.manual_seed(0)
    h, noise = torch.randn(3, 4), torch.randn(3, 4)
    want = ((net(h + noise) - h) ** 2).sum(1).mean()
    assert torch.isfinite(want)
    torch.testing.assert_close(den.loss(h, noise), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- memory

@pytest.mark.parametrize("call", ["loss", "forward"])
def test_a_loss_kept_after_backward_holds_no_activations(call, monkeypatch):
    """The eager Functions' activations are freed by the backward, as torch's layers' are: kept in a ctx attribute
    before, they lived as long as the output did, so a loss kept after backward() (the last step's until reassigned,
    a list of logged losses) held every layer's activations (384 MiB at B = 32768, 512 features)."""
    import weakref

    from fastgan.ops import denoiser_net

    made = []
    real = denoiser_net._hidden_layers

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        saved = args[12] if len(args) > 12 else kwargs["saved"]  # the list the layers' activations go to
        made.extend(weakref.ref(t) for t in saved[1:] if isinstance(t, torch.Tensor))
        return out

    monkeypatch.setattr(denoiser_net, "_hidden_layers", recording)
    monkeypatch.setattr(de, "_hidden_layers", recording)
    den = Denoiser(6, 8, 2, backend="cpu")
    h = torch.randn(16, 6, requires_grad=True)
    out = den.loss(h) if call == "loss" else den(h).square().sum()
    out.backward()
    assert len(made) >= 8  # (y, out, shift, invstd) of each hidden layer
    assert [r for r in made if r() is not None] == []  # `out` is still alive
