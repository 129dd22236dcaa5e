"""The Denoiser module refuses layers its fused kernels would misread or ignore, when wrapped and at every call
after the layers change: widths that do not chain (the kernels read each vector by the Linear's width),
subclasses, hooks, parametrizations, layers in another mode than the module, shared running-statistic buffers;
layers replaced after construction are used; sigma is checked when set; an empty batch works everywhere."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from fastgan.ops import Denoiser, bn_relu, denoiser_loss
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


@pytest.mark.parametrize("call", ["loss", "no-grad forward"])
def test_triton_gemms_refuse_sizes_past_their_int32_offsets(monkeypatch, call):
    # 2**31 elements cannot be allocated here: lower the limit and check the refusal names the backend and layer
    from fastgan.kernels import denoiser_gemm

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
