"""torch.func's differentiating transforms over fastgan's ops: refused with a message saying what to use instead
(under jvp/jacfwd torch gives a custom op zero tangents, a silently wrong derivative; grad/jacrev failed with a
message about setup_context). An op whose inputs the transform does not differentiate (constants to it) runs, and
vmap still runs (torch loops over the batch)."""
import pytest
import torch
from torch import nn
from torch.func import grad, jacfwd, jacrev, jvp, vmap

from fastgan.ops import (Denoiser, _eager, bn_relu, denoiser_generator_loss, denoiser_loss, grad_norm_penalty,
                         js_penalty, noisy_clean_batch, nt_losses)

BACKENDS = ["reference", "cpu", "triton"]
TRANSFORMS = {
    "jvp": lambda f, x: jvp(f, (x,), (torch.ones_like(x),)),
    "jacfwd": lambda f, x: jacfwd(f)(x),
    "grad": lambda f, x: grad(lambda a: f(a).sum())(x),
    "jacrev": lambda f, x: jacrev(f)(x),
}


def _ops(backend):
    """{name: (function of one float64 tensor, that tensor)}."""
    torch.manual_seed(0)
    l = torch.randn(8, dtype=torch.float64)
    D = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1)).double()
    xf = torch.randn(8, 3, dtype=torch.float64)
    den = Denoiser(4, 6, 2, backend=backend, dtype=torch.float64).eval()
    weights = [m.weight for m in den.linears]
    biases = [m.bias for m in den.linears]
    gammas = [m.weight for m in den.norms]
    betas = [m.bias for m in den.norms]
    eps = torch.randn(8, 3, dtype=torch.float64)
    return {
        "grad_norm_penalty": (lambda g: grad_norm_penalty(g, l, "js_real", backend=backend), torch.randn(8, 5, dtype=torch.float64)),
        "nt_losses": (lambda a: nt_losses(a, l, 0.3, backend=backend), torch.randn(8, dtype=torch.float64)),
        "noisy_clean_batch": (lambda a: noisy_clean_batch(a, None, eps, backend=backend)[0], torch.randn(8, 3, dtype=torch.float64)),
        "js_penalty(mlp)": (lambda a: js_penalty(D, a, xf, mode="mlp", backend=backend)[0], torch.randn(8, 3, dtype=torch.float64)),
        "js_penalty(double_backward)": (lambda a: js_penalty(D, a, xf, mode="double_backward", backend=backend)[0], torch.randn(8, 3, dtype=torch.float64)),
        "Denoiser": (lambda h: den(h), torch.randn(5, 4, dtype=torch.float64)),
        "Denoiser.loss": (lambda h: den.loss(h, torch.zeros_like(h), detach=False), torch.randn(5, 4, dtype=torch.float64)),
        "denoiser_loss": (lambda h: denoiser_loss(h, weights, biases, gammas, betas, noise=torch.zeros_like(h),
                                                  backend=backend), torch.randn(5, 4, dtype=torch.float64)),
        "denoiser_generator_loss": (lambda h: denoiser_generator_loss(h, weights, biases, gammas, betas,
                                                                      backend=backend),
                                    torch.randn(5, 4, dtype=torch.float64)),
        "bn_relu": (lambda y: bn_relu(y, None, gammas[0], betas[0], training=True, backend=backend), torch.randn(5, 6, dtype=torch.float64)),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_differentiating_transforms_are_refused(backend, transform):
    for name, (f, x) in _ops(backend).items():
        f(x)  # runs outside the transform
        with pytest.raises(NotImplementedError, match=r"fastgan's ops do not support torch\.func's .* torch\.autograd"):
            TRANSFORMS[transform](f, x)
            pytest.fail(f"{name}: no error under {transform}")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_vmap_still_runs(backend):
    l = torch.randn(4, 8, dtype=torch.float64)
    g = torch.randn(4, 8, 5, dtype=torch.float64)
    got = vmap(lambda g_, l_: grad_norm_penalty(g_, l_, "js_real", backend=backend))(g, l)
    want = torch.stack([grad_norm_penalty(g[i], l[i], "js_real", backend=backend) for i in range(4)])
    torch.testing.assert_close(got, want)


def test_the_reference_formulas_transform():
    """What the message points to: fastgan.reference's plain formulas go through torch.func."""
    from fastgan.reference import nt_losses as ref

    a, b = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    t = torch.randn(8, dtype=torch.float64)
    _, tangent = jvp(lambda x: ref.d_loss(x, b, 0.3), (a,), (t,))
    (g,) = torch.autograd.grad(ref.d_loss(a.requires_grad_(), b, 0.3), a)
    torch.testing.assert_close(tangent, (g * t).sum())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("transform", ["grad", "jvp"])
def test_an_op_on_constants_inside_a_transform_runs(backend, transform):
    """d/dw of w * L with L = nt_losses, a noisy batch, a Denoiser's loss of constants: L. (A penalty of D is
    refused under the transform whatever its inputs: it takes D's input gradient with torch.autograd.)"""
    torch.manual_seed(0)
    lr, lf = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    x, eps = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    den = Denoiser(4, 6, 2, backend=backend, dtype=torch.float64).eval()
    h = torch.randn(5, 4, dtype=torch.float64)
    for L in (lambda: nt_losses(lr, lf, 0.3, backend=backend),
              lambda: noisy_clean_batch(x, None, eps, backend=backend)[0].pow(2).sum(),
              lambda: den.loss(h, torch.zeros_like(h))):
        with torch.no_grad():
            want = L()
        w = torch.tensor(2.0, dtype=torch.float64)
        if not _eager._CONSTANTS_UNDER_TRANSFORMS:  # torch 2.4: refused with the message, not torch's error
            with pytest.raises(NotImplementedError, match="fastgan's ops do not support torch.func"):
                grad(lambda w_: w_ * L())(w) if transform == "grad" else jvp(lambda w_: w_ * L(), (w,), (w,))
            continue
        if transform == "grad":
            got = grad(lambda w_: w_ * L())(w)
        else:
            got = jvp(lambda w_: w_ * L(), (w,), (torch.ones_like(w),))[1]
        torch.testing.assert_close(got, want)


def test_a_denoiser_whose_parameters_are_differentiated_is_refused():
    den = Denoiser(4, 6, 2, backend="cpu", dtype=torch.float64).eval()
    h = torch.randn(5, 4, dtype=torch.float64)
    params = dict(den.named_parameters())
    with pytest.raises(NotImplementedError, match="torch.func's grad/jacrev/vjp"):
        grad(lambda p: torch.func.functional_call(den, p, (h,)).sum())(params)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_dual_tensors_of_forward_mode_ad_are_refused(backend):
    """torch.autograd.forward_ad (what mode="jvp" runs D's forward in) dropped a dual input's tangent through the ops,
    silently; an op on a plain tensor inside a dual level runs."""
    import torch.autograd.forward_ad as fwAD

    for name, (f, x) in _ops(backend).items():
        with fwAD.dual_level():
            f(x)  # not dual: runs
            with pytest.raises(NotImplementedError, match="no forward-mode derivative"):
                f(fwAD.make_dual(x, torch.ones_like(x)))
                pytest.fail(f"{name}: no error for a dual input")


class _NoisyD(nn.Module):
    """NTGAN's noise inside D's forward."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(noisy_clean_batch(x, None, 0.1, mode="half")[0])


def test_jvp_penalty_of_a_d_calling_an_op_is_refused(monkeypatch):
    """It gave a penalty without gradient, silently; "auto" (as on CUDA) falls back to the double backward."""
    from helpers import auto_as_on_cuda
    from fastgan.ops import _dispatch, gradient_penalty

    torch.manual_seed(0)
    D, x = _NoisyD(), torch.randn(8, 6)
    with pytest.raises(NotImplementedError, match="needs mode='double_backward'"):
        gradient_penalty(D, x, mode="jvp")
    auto_as_on_cuda(monkeypatch)
    with pytest.warns(_dispatch.FallbackWarning, match="no forward-mode derivative"):
        pen, _ = gradient_penalty(D, x, mode="auto")
    assert pen.requires_grad


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("noise", [0.5, "tensor"])
def test_vmap_over_the_noise_draw_says_what_to_do(backend, noise):
    """The draw advances one counter state a call: under vmap it failed with torch's error about .item(); an eps
    drawn outside runs under vmap as a loop over the samples does."""
    from fastgan.ops import noisy_clean_batch

    x = torch.randn(3, 4, 5)
    sigma = torch.tensor(0.5) if noise == "tensor" else noise
    with pytest.raises(NotImplementedError, match=r"random draw .* cannot run under torch\.func transforms such as "
                                                  r"vmap.*pass it as noise \(an eps tensor\)"):
        vmap(lambda x_: noisy_clean_batch(x_, x_, sigma, backend=backend)[0], randomness="different")(x)
    eps = torch.randn(3, 4, 5)
    got = vmap(lambda x_, e_: noisy_clean_batch(x_, x_, e_, backend=backend)[0])(x, eps)
    torch.testing.assert_close(got, torch.stack([noisy_clean_batch(x[i], x[i], eps[i], backend=backend)[0]
                                                 for i in range(3)]))
