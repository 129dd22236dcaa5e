"""Discriminators must support gradient penalties: autograd.grad(logits, x, create_graph=True) and a backward
through it, and their mixed second derivatives (d/dθ of ∇x D) must be right."""
import pytest
import torch
from torch.func import functional_call
from torch.nn.utils import parametrize

from fastgan.models import ModelConfig, build_discriminator

SMALL = [
    ("mlp", (3,), dict(d_hidden=(6, 5))),
    ("mlp", (2,), dict(d_hidden=(6, 5), mlp_activation="leaky_relu")),  # BatchNorm: covered by dcgan
    ("goodfellow", (4,), dict(d_hidden=(5, 4), maxout_pieces=3)),
    ("dcgan", (2, 8, 8), dict(dcgan_width=2)),
    ("resnet", (2, 16, 16), dict(resnet_width=1)),
]


def penalty_step(D, x):
    x = x.detach().requires_grad_()
    g, = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    loss = g.pow(2).flatten(1).sum(1).mean()
    loss.backward()
    return loss


@pytest.mark.parametrize("sn", [False, True])
@pytest.mark.parametrize("arch,shape,kw", SMALL)
def test_double_backward_reaches_parameters(arch, shape, kw, sn):
    torch.manual_seed(0)
    D = build_discriminator(ModelConfig(arch=arch, spectral_norm=sn, **kw), shape)
    D.train()
    for _ in range(2):  # twice: spectral norm's in-place power iteration must not break the second pass
        D.zero_grad()
        loss = penalty_step(D, torch.randn(6, *shape))
    assert torch.isfinite(loss) and loss > 0
    first = next(m for m in D.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    w = first.parametrizations.weight.original if sn else first.weight
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


@pytest.mark.parametrize("arch,shape,kw", SMALL)
def test_mixed_second_derivatives_gradgradcheck(arch, shape, kw):
    torch.manual_seed(0)
    D = build_discriminator(ModelConfig(arch=arch, **kw), shape).double()
    if arch == "goodfellow":
        D.eval()  # dropout off: deterministic
    names = [n for n, _ in D.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in D.parameters())
    x = torch.randn(4, *shape, dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        return functional_call(D, dict(zip(names, ps)), (x,))

    # checks ∂²D/∂x∂θ (what the penalty's parameter gradient needs) against finite differences;
    # BatchNorm stays in train mode (batch statistics), which is deterministic given the batch
    # fast_mode: random projections instead of full Jacobians (the full check of the conv D takes minutes)
    assert torch.autograd.gradgradcheck(f, (x, *params), eps=1e-6, atol=1e-4, fast_mode=True)


def test_spectral_norm_option():
    torch.manual_seed(0)
    D = build_discriminator(ModelConfig(spectral_norm=True, d_hidden=(16, 16)), (3,))
    layers = [m for m in D.modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 3 and all(parametrize.is_parametrized(m, "weight") for m in layers)
    plain = build_discriminator(ModelConfig(d_hidden=(16, 16)), (3,))
    assert not any(parametrize.is_parametrized(m, "weight") for m in plain.modules() if isinstance(m, torch.nn.Linear))
    D.train()
    for _ in range(30):  # power iteration converges over forward passes
        D(torch.randn(2, 3))
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach(), ord=2)
        assert abs(sigma.item() - 1.0) < 0.05
    convD = build_discriminator(ModelConfig(arch="dcgan", dcgan_width=2, spectral_norm=True), (1, 8, 8))
    convs = [m for m in convD.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert convs and all(parametrize.is_parametrized(m, "weight") for m in convs)


@pytest.mark.parametrize("batchnorm,sn,input_bn", [(False, False, False), (False, True, False), (True, False, False),
                                                   (False, True, True)])
def test_dcgan_discriminator_runs_the_closed_form(batchnorm, sn, input_bn):
    """fastgan's DCGAN D opts into the penalty's closed form (as_sequential): its gradients equal the double
    backward's, and "auto" picks it (on CPU also with batch statistics), NTGAN 6.3's input BatchNorm included."""
    import copy

    from fastgan.ops import _dispatch, js_penalty, penalty_jvp

    torch.manual_seed(0)
    D = build_discriminator(ModelConfig(arch="dcgan", dcgan_width=2, d_batchnorm=batchnorm, spectral_norm=sn,
                                        d_input_batchnorm=input_bn), (2, 8, 8)).double()
    assert isinstance(D.net[0], torch.nn.BatchNorm2d) == input_bn
    xr, xf = torch.randn(5, 2, 8, 8, dtype=torch.float64), torch.randn(5, 2, 8, 8, dtype=torch.float64)
    assert penalty_jvp.auto_mode(D, xr, "mean") == "mlp"
    grads = []
    for mode in ("double_backward", "mlp"):
        Dm = copy.deepcopy(D)
        before = _dispatch.counts[("gradient_penalty", mode)]
        pen, lr, lf = js_penalty(Dm, xr, xf, mode=mode)
        assert _dispatch.counts[("gradient_penalty", mode)] == before + 2
        (lr.mean() - lf.mean() + pen).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in Dm.parameters()]))
    assert grads[0].norm() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("batchnorm,sn", [(True, False), (False, False), (True, True)])
def test_resnet_discriminator_penalty_in_every_mode(batchnorm, sn):
    """The ResNet D (Roth et al.'s CelebA / LSUN runs) under js_penalty: "jvp" and "auto" give the double backward's
    parameter gradients, every parameter gets one; it has no closed form (residual shortcuts are not one chain of
    layers), so "auto" takes the double backward on CPU and an explicit "mlp" raises, naming why."""
    import copy

    from fastgan.ops import _dispatch, js_penalty, penalty_jvp

    torch.manual_seed(0)
    D = build_discriminator(ModelConfig(arch="resnet", resnet_width=2, d_batchnorm=batchnorm, spectral_norm=sn),
                            (2, 16, 16)).double()
    xr, xf = torch.randn(5, 2, 16, 16, dtype=torch.float64), torch.randn(5, 2, 16, 16, dtype=torch.float64)
    assert penalty_jvp.auto_mode(D, xr, "mean") == "double_backward"
    results = {}
    for mode, ran in (("double_backward", "double_backward"), ("jvp", "jvp"), ("auto", "double_backward")):
        Dm = copy.deepcopy(D)
        before = _dispatch.counts[("gradient_penalty", ran)]
        pen, lr, lf = js_penalty(Dm, xr, xf, mode=mode)
        assert _dispatch.counts[("gradient_penalty", ran)] == before + 2
        (lr.mean() - lf.mean() + pen).backward()
        named = list(Dm.named_parameters())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in named), \
            [n for n, p in named if p.grad is None or p.grad.abs().sum() == 0]
        results[mode] = (pen.detach(), torch.cat([p.grad.reshape(-1) for _, p in named]),
                         [b.clone() for b in Dm.buffers()])
    pen0, grad0, buffers0 = results["double_backward"]
    assert pen0 > 0 and grad0.norm() > 0
    for mode in ("jvp", "auto"):
        pen, grad, buffers = results[mode]
        torch.testing.assert_close(pen, pen0, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grad, grad0, rtol=1e-8, atol=1e-10)
        for b, b0 in zip(buffers, buffers0):  # BatchNorm statistics and power iterations advance alike
            torch.testing.assert_close(b, b0, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"mode='mlp' cannot run this D: D is not an nn\.Sequential"):
        js_penalty(copy.deepcopy(D), xr, xf, mode="mlp")
