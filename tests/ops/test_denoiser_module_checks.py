"""The Denoiser module refuses layers its fused kernels would misread or ignore, when wrapped and at every call
after the layers change: widths that do not chain (the kernels read each vector by the Linear's width),
subclasses, hooks, parametrizations, layers in another mode than the module, shared running-statistic buffers;
layers replaced after construction are used; sigma is checked when set; an empty batch works everywhere."""
import copy

import numpy as np
import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from fastgan.ops import Denoiser, bn_relu, denoiser_generator_loss, denoiser_loss
from fastgan.reference import denoiser as ref

from denoiser_helpers import CPU_BACKENDS, make_pair

FUSED = [b for b in CPU_BACKENDS if b != "reference"]


def _seq(*mods):
    return nn.Sequential(*mods).double()


@pytest.mark.parametrize("mods,match", [
    ((nn.Linear(4, 8), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(8, 4)), r"net\[1\] normalises 6 features but net\[0\]"),
    ((nn.Linear(4, 6), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)), r"net\[1\] normalises 8 features but net\[0\]"),
    ((nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(5, 4)), r"net\[3\] takes 5 features"),
])
def test_widths_that_do_not_chain_are_refused(mods, match):
    with pytest.raises(ValueError, match=match):
        Denoiser.from_sequential(_seq(*mods))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("training", [True, False])
def test_a_buffer_replaced_by_one_of_another_size_is_refused_at_the_call(backend, training):
    den, _ = make_pair(backend=backend, training=training)
    den.net[1].running_var = torch.ones(2, dtype=torch.float64)
    h = torch.randn(6, 12, dtype=torch.float64)
    for call in (lambda: den(h), lambda: den.loss(h), lambda: den.generator_loss(h)):
        with pytest.raises(ValueError, match=r"running_vars\[0\] must have shape \(16,\), got \(2,\)"):
            call()
    den.net[1].running_var = torch.ones(16, dtype=torch.float64)  # a right-sized one is adopted
    den(h)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_from_sequential_keeps_the_nets_mode(backend):
    torch.manual_seed(0)
    net = ref.make_denoiser(4, 6, 2).double().eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
    want = copy.deepcopy(net)
    den = Denoiser.from_sequential(net, backend=backend)
    assert not den.training
    h = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(den(h), want(h), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net[1].running_mean, want[1].running_mean, rtol=0, atol=0)


def test_mixed_modes_are_refused():
    net = ref.make_denoiser(4, 6, 2).double()
    net[1].eval()
    with pytest.raises(ValueError, match="mixes train and eval modes"):
        Denoiser.from_sequential(net)
    den, _ = make_pair()
    den.net[1].eval()
    with pytest.raises(ValueError, match=r"net\[1\] is in eval mode but the Denoiser in training mode"):
        den(torch.randn(6, 12, dtype=torch.float64))
    den.train()  # one mode again
    den(torch.randn(6, 12, dtype=torch.float64))


class _TanhReLU(nn.ReLU):
    def forward(self, x):
        return torch.tanh(x)


def test_subclasses_hooks_and_parametrizations_are_refused():
    with pytest.raises(ValueError, match=r"net\[2\] must be ReLU itself, got the subclass _TanhReLU"):
        Denoiser.from_sequential(_seq(nn.Linear(4, 6), nn.BatchNorm1d(6), _TanhReLU(), nn.Linear(6, 4)))
    with pytest.raises(ValueError, match=r"net\[0\] must be Linear itself, got a parametrized Linear"):
        Denoiser.from_sequential(_seq(parametrizations.spectral_norm(nn.Linear(4, 6)), nn.BatchNorm1d(6), nn.ReLU(),
                                      nn.Linear(6, 4)))
    h = torch.randn(6, 12, dtype=torch.float64)
    den, _ = make_pair()
    handle = den.net[0].register_forward_hook(lambda m, i, o: o * 2)  # after wrapping: found at the call
    with pytest.raises(ValueError, match=r"net\[0\] has hooks"):
        den(h)
    handle.remove()
    den(h)
    parametrizations.spectral_norm(den.net[3])
    with pytest.raises(ValueError, match=r"net\[3\] must be Linear itself, got a parametrized Linear"):
        den.loss(h)


class _DoubledSequential(nn.Sequential):
    def forward(self, x):
        return 2 * super().forward(x)


class _NamedSequential(nn.Sequential):  # a subclass that keeps nn.Sequential's forward computes the same
    pass


def test_the_container_s_own_forward_and_hooks_are_refused():
    layers = lambda: (nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 4))  # noqa: E731
    with pytest.raises(ValueError, match="net: _DoubledSequential has its own forward"):
        Denoiser.from_sequential(_DoubledSequential(*layers()))
    Denoiser.from_sequential(_NamedSequential(*layers()))
    den, _ = make_pair()
    h = torch.randn(6, 12, dtype=torch.float64)
    handle = den.net.register_forward_hook(lambda m, i, o: o * 2)  # on the container, after wrapping
    with pytest.raises(ValueError, match="net has hooks"):
        den.loss(h)
    handle.remove()
    den.loss(h)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_layer_replaced_after_construction_is_used(backend):
    den, _ = make_pair(backend=backend, training=False)
    torch.manual_seed(5)
    den.net[0] = nn.Linear(12, 16).double()
    h = torch.randn(6, 12, dtype=torch.float64)
    torch.testing.assert_close(den(h), den.net(h), rtol=1e-12, atol=1e-12)
    den.net[0] = nn.Linear(12, 9).double()
    with pytest.raises(ValueError, match=r"net\[1\] normalises 16 features but net\[0\] gives 9"):
        den(h)


def _replicate_on_cpu(module, monkeypatch):
    """A replica as torch's replicate() makes it for DataParallel (its parameters plain non-leaf attributes, its
    _parameters empty), with only its CUDA broadcast replaced by a differentiable copy."""
    import importlib

    rep = importlib.import_module("torch.nn.parallel.replicate")
    monkeypatch.setattr(rep, "_broadcast_coalesced_reshape", lambda tensors, devices, detach=False: [
        [t.detach().clone() if detach else t * 1 for t in tensors] for _ in devices])
    return rep.replicate(module, [0, 1], detach=False)[1]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_layers_holding_tensors_that_are_not_their_parameters(backend, training, monkeypatch):
    """A DataParallel replica holds its parameters as plain attributes, and a user may delete a weight and set a
    computed tensor (or a buffer) in its place: nn.Linear's forward reads them all the same, and the Denoiser did not
    (KeyError: 'weight')."""
    den, net = make_pair(backend=backend, training=training)
    h = torch.randn(6, 12, dtype=torch.float64)
    r_den, r_net = _replicate_on_cpu(den, monkeypatch)(h), _replicate_on_cpu(net, monkeypatch)(h)
    torch.testing.assert_close(r_den, r_net, rtol=1e-12, atol=1e-12)
    r_den.pow(2).sum().backward()
    r_net.pow(2).sum().backward()
    for (k, p), q in zip(den.named_parameters(), net.parameters()):  # the originals' gradients, through the copies
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=k)
    w = torch.randn(16, 12, dtype=torch.float64)
    for lin in (den.net[0], net[0]):
        del lin.weight
        lin.weight = w
    torch.testing.assert_close(den(h), net(h), rtol=1e-12, atol=1e-12)
    for lin in (den.net[0], net[0]):
        del lin.weight
        lin.register_buffer("weight", 2 * w)
    torch.testing.assert_close(den(h), net(h), rtol=1e-12, atol=1e-12)
    for (k, a), b in zip(den.net.state_dict().items(), net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=k)


def test_running_statistics_sharing_memory_are_refused():
    y = torch.randn(6, 5, dtype=torch.float64)
    p = torch.ones(5, dtype=torch.float64)
    stats = torch.ones(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="running_var shares its memory with running_mean"):
        bn_relu(y, p, p, p, stats, stats)
    net = ref.make_denoiser(3, 4, 2).double()
    w = [net[i].weight for i in (0, 3, 6)]
    b = [net[i].bias for i in (0, 3, 6)]
    g = [net[i].weight for i in (1, 4)]
    be = [net[i].bias for i in (1, 4)]
    rm = [net[1].running_mean, net[4].running_mean]
    with pytest.raises(ValueError, match=r"running_vars\[1\] shares its memory with running_means\[0\]"):
        denoiser_loss(torch.randn(6, 3, dtype=torch.float64), w, b, g, be, rm, [net[1].running_var, rm[0]])


def test_sigma_is_checked_when_set():
    den = Denoiser(4)
    den.sigma = 0.5
    assert den.sigma == 0.5
    with pytest.raises(ValueError, match="^sigma must be >= 0"):
        den.sigma = -1.0
    with pytest.raises(TypeError, match="^sigma must be a number, got a Tensor"):
        den.sigma = torch.tensor(0.5, requires_grad=True)
    assert den.sigma == 0.5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_batch_in_eval_mode(backend):
    den, net = make_pair(backend=backend, training=False)
    h = torch.randn(0, 12, dtype=torch.float64)
    den.loss(h, reduction="sum").backward()
    ref.denoiser_loss(net, h, torch.randn_like(h), reduction="sum").backward()
    for (k, p), q in zip(den.named_parameters(), net.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=k)
    y = torch.randn(0, 5, dtype=torch.float64, requires_grad=True)
    gamma = torch.ones(5, dtype=torch.float64, requires_grad=True)
    out = bn_relu(y, None, gamma, torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64),
                  torch.ones(5, dtype=torch.float64), training=False, backend=backend)
    out.sum().backward()
    assert torch.equal(gamma.grad, torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bn_relu_with_no_features(backend, training):
    """Zero features: the running stats given are empty tensors (null data pointers), not missing ones."""
    y = torch.randn(4, 0, dtype=torch.float64, requires_grad=True)
    e = [torch.zeros(0, dtype=torch.float64) for _ in range(5)]
    e[1].requires_grad_()
    out = bn_relu(y, e[0], e[1], e[2], e[3], e[4], training=training, backend=backend)
    assert out.shape == (4, 0)
    out.sum().backward()
    assert y.grad.shape == (4, 0) and e[1].grad.shape == (0,)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bn_relu_passes_the_gradient_of_a_nan_like_torch(backend):
    """torch's ReLU zeroes the gradient where its output is <= 0 only: a NaN passes it on."""
    y = torch.tensor([[float("nan"), 1.0], [0.5, -1.0]], dtype=torch.float64)
    stats = [torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
             torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    got, want = y.clone().requires_grad_(), y.clone().requires_grad_()
    bn_relu(got, None, *stats, training=False, backend=backend).sum().backward()
    F.relu(F.batch_norm(want, stats[2], stats[3], stats[0], stats[1], False)).sum().backward()
    assert torch.equal(got.grad, want.grad) and got.grad[0, 0] != 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_depth_0_takes_one_sample_in_training_mode(backend):
    """A depth-0 denoiser is one Linear: no batch statistics, so a batch of one is fine in training mode, as for
    the nn.Sequential it wraps (the refusal of one sample is BatchNorm's)."""
    den, net = make_pair(depth=0, backend=backend, training=True)
    h, noise = torch.randn(1, 12, dtype=torch.float64, requires_grad=True), torch.randn(1, 12, dtype=torch.float64)
    lin = net[0]
    losses = {"module": den.loss(h, noise=noise),
              "functional": denoiser_loss(h, [lin.weight], [lin.bias], [], [], noise=noise, backend=backend)}
    want = ref.denoiser_loss(net, h, noise)
    for name, got in losses.items():
        torch.testing.assert_close(got, want, msg=name)
    torch.testing.assert_close(den(h), net(h))
    g_fake = denoiser_generator_loss(h, [lin.weight], [lin.bias], [], [], backend=backend)
    torch.testing.assert_close(den.generator_loss(h), g_fake)
    torch.testing.assert_close(g_fake, ref.generator_loss(net, h))
    with pytest.raises(ValueError, match="^h: training-mode BatchNorm needs a batch of at least 2 samples, got 1"):
        make_pair(depth=1, backend=backend, training=True)[0].loss(h, noise=noise)


@pytest.mark.parametrize("call", ["loss", "no-grad forward"])
def test_triton_gemms_refuse_sizes_past_their_int32_offsets(monkeypatch, call):
    # 2**31 elements cannot be allocated here: lower the limit and check the refusal names the backend and layer
    from fastgan.kernels import denoiser_gemm

    monkeypatch.setenv("FASTGAN_DENOISER_TRITON_GEMM", "tl.dot")

    den = Denoiser(12, hidden=16, depth=2, backend="triton").double()
    h = torch.randn(9, 12, dtype=torch.float64)

    def run():
        if call == "loss":
            return den.loss(h)
        with torch.no_grad():
            return den(h)

    monkeypatch.setattr(denoiser_gemm, "INT32_ELEMENTS", 16 * 16)  # the (16, 16) hidden weight
    with pytest.raises(ValueError, match=r"backend='triton': layer 1 \(16 -> 16 features\) at batch 9 .* 256 "):
        run()
    monkeypatch.setattr(denoiser_gemm, "INT32_ELEMENTS", 16 * 16 + 1)
    run()
    monkeypatch.setattr(denoiser_gemm, "GRID_Y", 0)  # 16 features per grid row, none allowed: the first layer's 16
    with pytest.raises(ValueError, match=r"backend='triton': layer 0 \(12 -> 16 features\) has more than 0 features"):
        run()


def _compile_fullgraph(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


# ------------------------------------------------------------------ bn_relu's running statistics

def test_bn_relu_with_running_stats_under_compile_fullgraph():
    y, bias, gamma, beta = torch.randn(6, 5), torch.randn(5), torch.rand(5) + 0.5, torch.randn(5)
    rm, rv = torch.zeros(5), torch.ones(5)
    out = _compile_fullgraph(lambda y, rm, rv: bn_relu(y, bias, gamma, beta, rm, rv))(y, rm, rv)
    rm2, rv2 = torch.zeros(5), torch.ones(5)
    torch.testing.assert_close(out, F.relu(F.batch_norm(y + bias, rm2, rv2, gamma, beta, True, 0.1, 1e-5)))
    torch.testing.assert_close((rm, rv), (rm2, rv2))


def test_bn_relu_with_its_defaults_under_compile_dynamic_fullgraph():
    """Under dynamic=True the float defaults (momentum, eps) are symbolic, and their check's math.isfinite was not
    traceable: fullgraph=True failed (an audit of the ops under torch.compile, 2026-12-06)."""
    torch._dynamo.reset()
    b, g, be = torch.randn(5), torch.rand(5) + 0.5, torch.randn(5)
    rm, rv = torch.zeros(5), torch.ones(5)
    f = torch.compile(lambda y: bn_relu(y, b, g, be, rm, rv, training=True), backend="aot_eager", fullgraph=True,
                      dynamic=True)
    for B in (8, 16):
        y = torch.randn(B, 5)
        torch.testing.assert_close(f(y), F.relu(F.batch_norm(y + b, None, None, g, be, True, 0.1, 1e-5)))


def test_bn_relu_running_stats_in_disjoint_slices_of_one_buffer():
    flat = torch.zeros(10)
    flat[5:] = 1
    y, gamma, beta = torch.randn(6, 5), torch.ones(5), torch.zeros(5)
    bn_relu(y, None, gamma, beta, flat[:5], flat[5:])
    rm, rv = torch.zeros(5), torch.ones(5)
    F.batch_norm(y, rm, rv, gamma, beta, True, 0.1, 1e-5)
    torch.testing.assert_close(flat, torch.cat([rm, rv]))


@pytest.mark.parametrize("second", [slice(4, 9), slice(0, 5)], ids=["overlapping", "same"])
def test_bn_relu_running_stats_overlapping_in_one_buffer_are_refused(second):
    flat = torch.zeros(10)
    y, gamma, beta = torch.randn(6, 5), torch.ones(5), torch.zeros(5)
    with pytest.raises(ValueError, match="running_var shares its memory with running_mean"):
        bn_relu(y, None, gamma, beta, flat[:5], flat[second])


def test_functional_denoiser_loss_with_running_stats_under_compile_fullgraph():
    den, _ = make_pair(hidden=16, depth=2, dtype=torch.float32, backend="cpu")
    net = den.net
    lin = [m for m in net if isinstance(m, nn.Linear)]
    bns = [m for m in net if isinstance(m, nn.BatchNorm1d)]
    h, noise = torch.randn(8, 12), torch.randn(8, 12)
    args = ([m.weight for m in lin], [m.bias for m in lin], [m.weight for m in bns], [m.bias for m in bns])
    running = lambda: ([m.running_mean.clone() for m in bns], [m.running_var.clone() for m in bns])  # noqa: E731
    rm, rv = running()
    rm2, rv2 = running()
    got = _compile_fullgraph(lambda h, n: denoiser_loss(h, *args, rm, rv, noise=n))(h, noise)
    want = denoiser_loss(h, *args, rm2, rv2, noise=noise)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close((rm, rv), (rm2, rv2))
    assert not torch.equal(rm[0], running()[0][0])  # the compiled call did update them


@pytest.mark.parametrize("training", [False, True])
def test_torch_export_of_a_module_holding_a_denoiser(training):
    """The Denoiser's cache of validated tensors is not written while torch.export traces (the traced tensors are
    not the module's; torch warned of tensor attributes assigned during export, asking for buffers)."""
    import warnings

    if training and tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 5):
        pytest.skip("torch 2.4's export verifier refuses the loss op's running-statistics updates (SpecViolationError, "
                    "with or without the Denoiser's cache)")
    torch.manual_seed(0)
    den = Denoiser(4, 6, 2).train(training)
    seq = copy.deepcopy(den.net)

    class Recon(nn.Module):
        def __init__(self):
            super().__init__()
            self.den = den

        def forward(self, h):
            return self.den.loss(h, torch.zeros_like(h)) if training else self.den(h)

    h = torch.randn(5, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ep = torch.export.export(Recon(), (h,))
    assert not [w for w in caught if "_objects" in str(w.message) or "assigned during export" in str(w.message)]
    assert {type(t) for t in den._objects} <= {torch.Tensor, nn.Parameter}
    if not training:
        torch.testing.assert_close(ep.module()(h), seq(h))
        torch.testing.assert_close(den(h), seq(h))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cumulative_average_with_batch_counts_that_differ_is_refused(backend):
    """momentum=None: nn.BatchNorm1d averages each layer over its own count; the kernels take one factor for all
    layers (the first's), so a layer reset or replaced after training updated the others wrongly."""
    den = Denoiser(6, 8, 2, momentum=None, backend=backend, dtype=torch.float64)
    net = copy.deepcopy(den.net)
    h = torch.randn(5, 6, dtype=torch.float64)
    for _ in range(3):
        den.loss(h, torch.zeros_like(h)).backward()
        net(h)
    for a, b in zip(den.net.modules(), net.modules()):
        if isinstance(a, nn.BatchNorm1d):
            torch.testing.assert_close(a.running_var, b.running_var)
            assert int(a.num_batches_tracked) == int(b.num_batches_tracked) == 3
    den.net[4].reset_running_stats()
    before = [b.clone() for b in den.buffers()]
    with pytest.raises(ValueError, match=r"net\[4\]\.num_batches_tracked is 0 but net\[1\]'s is 3.*momentum=None"):
        den.loss(h)
    assert all(torch.equal(a, b) for a, b in zip(before, den.buffers())), "nothing counted or updated"
    den.net[1].reset_running_stats()
    den.loss(h)  # counts equal again


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_features_made_under_inference_mode(backend):
    """Features (a frozen D's, say) and noise computed under inference_mode train the denoiser as an nn.Sequential's
    would."""
    den, net = make_pair(backend=backend)
    with torch.inference_mode():
        h = torch.randn(6, 12, dtype=torch.float64)
        noise = torch.randn(6, 12, dtype=torch.float64)
    loss = den.loss(h, noise)
    torch.testing.assert_close(loss, ref.denoiser_loss(net, h.clone(), noise, den.sigma))
    loss.backward()
    assert all(p.grad is not None for p in den.parameters())
    assert torch.isfinite(den(h).sum())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_functional_forms_take_inference_mode_inputs(backend):
    """denoiser_loss, denoiser_generator_loss and bn_relu take features, noise and pre-activations made under
    inference_mode as the module does, with the values and gradients of the same call on normal copies."""
    den, _ = make_pair(backend=backend)
    lin = [m for m in den.net if isinstance(m, nn.Linear)]
    bns = [m for m in den.net if isinstance(m, nn.BatchNorm1d)]
    args = ([m.weight for m in lin], [m.bias for m in lin], [m.weight for m in bns], [m.bias for m in bns])
    with torch.inference_mode():
        h, noise = torch.randn(6, 12, dtype=torch.float64), torch.randn(6, 12, dtype=torch.float64)
        y = torch.randn(6, 16, dtype=torch.float64)

    def run(h, noise, y):
        den.zero_grad(set_to_none=True)
        stats = [m.running_mean.clone() for m in bns], [m.running_var.clone() for m in bns]
        out = (denoiser_loss(h, *args, *stats, noise=noise, backend=backend),
               denoiser_generator_loss(h, *args, backend=backend),
               bn_relu(y, None, bns[0].weight, bns[0].bias, *(s[0] for s in stats), backend=backend).square().sum())
        sum(out).backward()
        return out, stats, [p.grad for p in den.parameters()]

    torch.testing.assert_close(run(h, noise, y), run(h.clone(), noise.clone(), y.clone()), rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_affine_turned_off_after_construction_is_refused_at_the_call(backend):
    """The kernels would still scale and shift by the layer's weight and bias: the next call refuses it, naming the
    layer, as the constructor does (track_running_stats turned off is followed: test_denoiser_batch_stats_only.py)."""
    den = Denoiser(5, 6, 2, backend=backend, dtype=torch.float64)
    h = torch.randn(8, 5, dtype=torch.float64)
    den.loss(h)
    den.net[4].affine = False
    before = [t.clone() for t in (den.net[4].running_mean, den.net[4].running_var)]
    with pytest.raises(ValueError, match=r"^net\[4\]: BatchNorm1d must have affine=True"):
        den.loss(h)
    assert all(torch.equal(a, b) for a, b in zip(before, (den.net[4].running_mean, den.net[4].running_var)))
    den.net[4].affine = True
    den.loss(h)


def test_numpy_scalars_are_numbers():
    """np.float32 is no Python float subclass but a numbers.Real: taken as the NTGAN ops take it, stored as float."""
    np = pytest.importorskip("numpy")
    den = Denoiser(4, 5, 2, sigma=np.float32(0.5), momentum=np.float32(0.25), eps=np.float64(1e-4))
    assert (den.sigma, den.momentum, den.eps) == (0.5, 0.25, pytest.approx(1e-4))
    assert all(type(v) is float for v in (den.sigma, den.net[1].momentum, den.net[1].eps))
    den.sigma = np.int64(2)
    assert den.sigma == 2.0 and type(den.sigma) is float
    y, gamma, beta = torch.randn(6, 3), torch.rand(3) + 0.5, torch.randn(3)
    rm, rv, rm2, rv2 = torch.zeros(3), torch.ones(3), torch.zeros(3), torch.ones(3)
    want = F.relu(F.batch_norm(y, rm2, rv2, gamma, beta, True, 0.3))
    got = bn_relu(y, None, gamma, beta, rm, rv, training=True, momentum=np.float32(0.3))
    assert torch.allclose(got, want, atol=1e-6) and torch.allclose(rm, rm2, atol=1e-7)
    with pytest.raises(TypeError, match=r"^sigma must be a real number, got bool"):
        Denoiser(4, sigma=np.bool_(True))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("counter,error,match", [
    (torch.tensor(0.0), TypeError, r"0-d torch.int64 tensor, as BatchNorm1d makes it, got torch.float32 of shape \(\)"),
    (torch.tensor(0, dtype=torch.int32), TypeError, "got torch.int32"),
    (torch.zeros(3, dtype=torch.int64), TypeError, r"got torch.int64 of shape \(3,\)"),
    (torch.tensor(0, device="meta"), ValueError, "meta but the weights are on cpu"),
], ids=["float32", "int32", "shape-3", "meta"])
def test_a_batch_counter_the_kernels_cannot_add_to_is_refused(backend, counter, error, match):
    """The cpu kernel added 1 to num_batches_tracked as an int64 whatever it was: a float32 counter read 4e-45
    after three steps (the reference: 3.0), an int32 one took an 8-byte write, a (3,) one became [3, 0, 0]."""
    torch.manual_seed(0)
    den = Denoiser(3, 4, 2, backend=backend)
    den.norms[1].num_batches_tracked = counter
    with pytest.raises(error, match=r"^net\[4\]\.num_batches_tracked (must be a|is on) .*" + match):
        den.loss(torch.randn(4, 3))
    den.norms[1].num_batches_tracked = torch.tensor(5)  # a right one is adopted
    den.loss(torch.randn(4, 3))
    assert [int(m.num_batches_tracked) for m in den.norms] == [1, 6]


def test_bn_relu_running_stats_that_require_grad_are_refused():
    """They were updated in place (F.batch_norm refuses them under grad mode)."""
    y, gamma, beta = torch.randn(6, 5), torch.ones(5), torch.zeros(5)
    rm = torch.zeros(5, requires_grad=True)
    with pytest.raises(ValueError, match="^running_mean requires grad: running statistics are buffers"):
        bn_relu(y, None, gamma, beta, rm, torch.ones(5))
    assert not rm.detach().any()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bn_relu_expanded_running_stats_are_refused_before_any_update(backend):
    """An expanded running_var: torch's own in-place error came after running_mean had been updated."""
    y, gamma, beta = torch.randn(6, 5), torch.ones(5), torch.zeros(5)
    rm, rv = torch.zeros(5), torch.ones(1).expand(5)
    with pytest.raises(ValueError, match="^running_var has elements sharing one memory location"):
        bn_relu(y, None, gamma, beta, rm, rv, backend=backend)
    assert not rm.any()


def test_bn_relu_running_stats_interleaved_in_one_buffer():
    """Every other element of one buffer each: separate statistics (F.batch_norm takes them), refused while the
    overlap test compared byte spans."""
    flat = torch.zeros(10)
    flat[1::2] = 1
    y, gamma, beta = torch.randn(6, 5), torch.ones(5), torch.zeros(5)
    bn_relu(y, None, gamma, beta, flat[0::2], flat[1::2])
    rm, rv = torch.zeros(5), torch.ones(5)
    F.batch_norm(y, rm, rv, gamma, beta, True, 0.1, 1e-5)
    torch.testing.assert_close((flat[0::2], flat[1::2]), (rm, rv))


# found by a DFM audit (2026-12-07); each failed before its fix
@pytest.mark.parametrize("net,exc,match", [
    (nn.Identity(), TypeError, r"^Denoiser\.net must be an nn\.Sequential, got Identity"),
    (nn.Sequential(nn.ReLU()), ValueError, r"^net\[0\] must be Linear, got ReLU"),
    (nn.Sequential(), ValueError, r"^net must be \(Linear, BatchNorm1d, ReLU\) x depth followed by a Linear"),
])
def test_a_replaced_net_is_named_before_its_first_layer_is_read(net, exc, match):
    # the call read net[0].weight first: "'Identity' object is not subscriptable", an AttributeError, an IndexError
    den = Denoiser(4, 5, 2)
    den.net = net
    with pytest.raises(exc, match=match):
        den.loss(torch.randn(6, 4))


def test_a_running_statistic_made_to_require_grad_after_construction_is_refused():
    # refused at construction, by bn_relu and denoiser_loss (and by F.batch_norm); the module took it at a call
    den = Denoiser(4, 5, 2)
    den.loss(torch.randn(6, 4))
    den.net[1].running_mean.requires_grad_(True)
    with pytest.raises(ValueError, match=r"^running_means\[0\] requires grad"):
        den.loss(torch.randn(6, 4))


def test_a_weight_of_more_than_two_dimensions_is_named_as_such():
    # the message read "weights[0] must have shape (1, 5), got (1, 5, 4)": a shape made from the bad weight itself
    h = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"^weights\[0\] must be a 2-D \(out, in\) matrix, got shape \(1, 5, 4\)"):
        denoiser_loss(h, [torch.randn(1, 5, 4), torch.randn(4, 5)], [torch.randn(5), torch.randn(4)],
                      [torch.ones(5)], [torch.zeros(5)])


def test_hidden_of_another_type_is_a_type_error():
    with pytest.raises(TypeError, match="^hidden must be an int or None, got int64"):
        Denoiser(4, np.int64(8))
    with pytest.raises(ValueError, match="^hidden must be >= 1 or None, got 0"):
        Denoiser(4, 0)


def test_a_depth_0_denoiser_reports_the_eps_and_momentum_it_was_given():
    den = Denoiser(4, depth=0, momentum=0.5, eps=1e-3)
    assert (den.momentum, den.eps) == (0.5, 1e-3)
