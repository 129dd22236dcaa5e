"""A Denoiser over BatchNorm1d layers that do not use or update running statistics computes what nn.Sequential
computes: layers built with track_running_stats=False (no buffers: batch statistics in both modes), layers whose
track_running_stats was turned off after construction (a usual way to freeze the statistics: batch statistics in
training mode, left as they are, and the frozen ones in eval mode), and running statistics set to None (batch
statistics in both modes, the batch counter still counted in training mode). Layers that differ in this are
refused, naming them: the kernels run every layer alike."""
import copy

import pytest
import torch
import torch._dynamo
from torch import nn

from fastgan.ops import Denoiser, _dispatch
from fastgan.reference import denoiser as ref

from denoiser_helpers import CPU_BACKENDS, _randomize_bn, assert_loss_step_matches_reference, delta, state

KINDS = ["built_without", "turned_off", "set_to_none"]


def _net(kind: str, momentum=0.1) -> nn.Sequential:
    torch.manual_seed(0)
    net = ref.make_denoiser(5, 7, 2, momentum).double()
    _randomize_bn(net)
    for m in net:
        if isinstance(m, nn.BatchNorm1d):
            if kind == "built_without":
                fresh = nn.BatchNorm1d(m.num_features, m.eps, m.momentum, track_running_stats=False).double()
                fresh.load_state_dict(m.state_dict(), strict=False)
                m.__dict__.update(fresh.__dict__)
            elif kind == "turned_off":
                m.track_running_stats = False
            else:
                m.running_mean = m.running_var = None
    return net


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_loss_forward_and_generator_term_match_nn_sequential(backend, training, kind):
    net = _net(kind).train(training)
    den = Denoiser.from_sequential(copy.deepcopy(net), backend=backend)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(6, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    noise = torch.randn(6, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    before = dict(_dispatch.counts)
    loss = den.loss(h, noise, detach=False)
    loss.backward()
    assert delta(before) == {("denoiser_loss", backend): 1, ("denoiser_loss_backward", backend): 1}
    assert_loss_step_matches_reference(den, net, loss, h, noise)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(den(x), net(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(den.generator_loss(x), ref.generator_loss(net, x), rtol=1e-12, atol=1e-12)
    want = state(net)
    for k, v in state(den.net).items():  # the buffers after every call: frozen or absent ones left alone
        torch.testing.assert_close(v, want[k], rtol=1e-9, atol=1e-11, msg=k)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cumulative_average_frozen_after_construction(backend):
    """momentum=None with track_running_stats turned off: nn.BatchNorm1d neither counts nor averages."""
    net = _net("turned_off", momentum=None).train()
    den = Denoiser.from_sequential(copy.deepcopy(net), backend=backend)
    h = torch.randn(6, 5, dtype=torch.float64)
    for _ in range(2):
        den(h), net(h)
    for k, v in state(den.net).items():
        torch.testing.assert_close(v, state(net)[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_without_statistics_needs_two_samples(training):
    """Batch statistics in eval mode too: nn.BatchNorm1d refuses a batch of one there as well."""
    den = Denoiser.from_sequential(_net("built_without").train(training), backend="cpu")
    with pytest.raises(ValueError, match="at least 2 samples"):
        den(torch.randn(1, 5, dtype=torch.float64))


@pytest.mark.parametrize("kind", KINDS)
def test_layers_that_differ_are_refused(kind):
    net = ref.make_denoiser(5, 7, 2).double()
    other = _net(kind)
    net[4] = other[4]
    with pytest.raises(ValueError, match=r"^net\[4\] .*running statistics.* net\[1\]"):
        Denoiser.from_sequential(net)


@pytest.mark.parametrize("kind", ["turned_off", "set_to_none"])
def test_a_change_after_construction_is_followed_at_the_next_call(kind):
    den = Denoiser(5, 7, 2, dtype=torch.float64, backend="cpu")
    net = copy.deepcopy(den.net)
    h = torch.randn(6, 5, dtype=torch.float64)
    den.loss(h, torch.zeros_like(h)), ref.denoiser_loss(net, h, torch.zeros_like(h))
    for module in (den.net, net):
        for m in module:
            if isinstance(m, nn.BatchNorm1d):
                if kind == "turned_off":
                    m.track_running_stats = False
                else:
                    m.running_mean = m.running_var = None
    running = lambda: [t for k, t in den.net.named_buffers() if "running" in k]  # counters: compared below
    frozen = [t.clone() for t in running()]
    torch.testing.assert_close(den.loss(h, torch.zeros_like(h)), ref.denoiser_loss(net, h, torch.zeros_like(h)))
    for k, v in state(den.net).items():  # the first call's update: equal to rounding
        torch.testing.assert_close(v, state(net)[k], rtol=1e-9, atol=1e-11, msg=k)
    assert all(torch.equal(a, b) for a, b in zip(frozen, running(), strict=True))


def test_one_running_statistic_without_the_other_is_refused():
    den = Denoiser(5, 7, 2, dtype=torch.float64)
    den.net[1].running_var = None
    with pytest.raises(ValueError, match=r"^net\[1\]: running_mean and running_var"):
        den(torch.randn(4, 5, dtype=torch.float64))


@pytest.mark.parametrize("kind", KINDS)
def test_under_compile_fullgraph(kind):
    """The custom ops' path (torch.compile) takes the same statistics, counters and batch normalisation (aot_eager:
    torch 2.4's inductor cannot run beside triton 3.6, docs/install.md)."""
    net = _net(kind).train()
    den = Denoiser.from_sequential(copy.deepcopy(net), backend="cpu")
    h = torch.randn(6, 5, dtype=torch.float64)
    torch._dynamo.reset()
    step = torch.compile(lambda x: den.loss(x, torch.zeros_like(x)) + den(x).sum(), fullgraph=True,
                         backend="aot_eager")
    torch.testing.assert_close(step(h), ref.denoiser_loss(net, h, torch.zeros_like(h)) + net(h).sum())
    for k, v in state(den.net).items():
        torch.testing.assert_close(v, state(net)[k], rtol=1e-9, atol=1e-11, msg=k)


def test_a_denoiser_pickled_before_the_flags_runs_as_tracked():
    """A whole module saved (torch.save) by an earlier fastgan has no _running_flags of its own: the class's default,
    tracked statistics, is what its layers hold."""
    den = Denoiser(5, 7, 2, dtype=torch.float64, backend="cpu")
    del den.__dict__["_running_flags"]
    h = torch.randn(6, 5, dtype=torch.float64)
    net = copy.deepcopy(den.net)
    torch.testing.assert_close(den.loss(h, torch.zeros_like(h)), ref.denoiser_loss(net, h, torch.zeros_like(h)))
    for k, v in state(den.net).items():
        torch.testing.assert_close(v, state(net)[k], rtol=1e-9, atol=1e-11, msg=k)
