"""The penalty modes inside torch.compile: the closed form (mode="mlp", or "auto" picking it) is traced, fullgraph
included; the double backward and the jvp path, which AOT autograd cannot differentiate twice, run eagerly inside
the compiled function (a graph break). Gradients and buffers must equal eager mode's."""
import copy

import pytest
import torch
import torch.nn.functional as F

from fastgan.ops import _dispatch, js_penalty, penalty_jvp

from penalty_zoo import DS  # tests/ on sys.path

# BatchNorm with momentum=None divides by its num_batches_tracked buffer, which torch.compile cannot trace with
# fullgraph=True even in a plain forward (mlp_bn_train, conv_bn_train have such a layer)
TRACED = ["mlp_leaky", "mlp_tanh", "mlp_bn_eval", "mlp_spectral", "conv_leaky", "conv_bn_eval_conv_head",
          "conv_spectral", "conv1d_dilated"]


def _loss(mode):
    def loss(D, xr, xf):
        pen, lr, lf = js_penalty(D, xr, xf, mode=mode)
        return F.softplus(-lr).mean() + F.softplus(lf).mean() + pen
    return loss


def _grads_and_buffers(D, fn, xr, xf, calls=2):
    for _ in range(calls):  # the second call reuses the compiled graph
        D.zero_grad()
        fn(D, xr, xf).backward()
    return [p.grad.clone() for p in D.parameters()], [b.clone() for b in D.buffers()]


def _compare(name, mode, backend, fullgraph, rtol=1e-12):
    factory, make_x, _ = DS[name]
    torch.manual_seed(0)
    D = factory().double()
    xr, xf = make_x(6).double(), make_x(6).double() * 0.5 + 0.3
    torch._dynamo.reset()
    want = _grads_and_buffers(copy.deepcopy(D), _loss(mode), xr, xf)
    compiled = torch.compile(_loss(mode), backend=backend, fullgraph=fullgraph)
    got = _grads_and_buffers(copy.deepcopy(D), compiled, xr, xf)
    torch._dynamo.reset()
    assert torch.cat([g.reshape(-1) for g in want[0]]).norm() > 0
    for g, w in zip(got[0], want[0]):
        torch.testing.assert_close(g, w, rtol=rtol, atol=1e-14)
    for b, w in zip(got[1], want[1]):
        torch.testing.assert_close(b, w, rtol=rtol, atol=1e-14)


@pytest.mark.parametrize("name", TRACED)
def test_closed_form_compiles_fullgraph(name):
    before = _dispatch.counts[("gradient_penalty", "mlp")]
    _compare(name, "mlp", "aot_eager", fullgraph=True)
    assert _dispatch.counts[("gradient_penalty", "mlp")] > before


def test_auto_traces_the_closed_form_fullgraph():
    assert penalty_jvp.auto_mode(DS["conv_leaky"][0](), DS["conv_leaky"][1](2), "mean") == "mlp"
    _compare("conv_leaky", "auto", "aot_eager", fullgraph=True)


def test_closed_form_under_inductor():
    _compare("conv_leaky", "mlp", "inductor", fullgraph=True, rtol=1e-10)


@pytest.fixture
def auto_jvp_on_cpu(monkeypatch):
    monkeypatch.setattr(penalty_jvp, "AUTO_JVP_DEVICES", {"cuda", "cpu"})


@pytest.mark.parametrize("mode", ["double_backward", "jvp", "auto"])
@pytest.mark.parametrize("name", ["conv_bn", "groupnorm_residual", "conv_bn_train"])
def test_other_modes_run_eagerly_inside_a_compiled_function(name, mode, auto_jvp_on_cpu):
    ran = DS[name][2] if mode == "auto" else mode
    before = _dispatch.counts[("gradient_penalty", ran)]
    _compare(name, mode, "aot_eager", fullgraph=False)
    assert _dispatch.counts[("gradient_penalty", ran)] > before


def test_double_backward_alone_fails_in_aot_autograd():
    """What the graph break avoids: the same double backward traced by AOT autograd is refused."""
    factory, make_x, _ = DS["conv_bn"]
    D = factory().double()
    x = make_x(4).double()

    def traced(x):
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
        return g.pow(2).sum()

    torch._dynamo.reset()
    with pytest.raises(Exception, match="double backward"):
        torch.compile(traced, backend="aot_eager")(x).backward()
    torch._dynamo.reset()
