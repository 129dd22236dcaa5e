"""Triton launches on the current CUDA device, not on its tensors' device: every Triton kernel launch of every op
goes through _dispatch.on_device (checked here on CPU by recording the guard's calls), and on a machine with two
GPUs the ops run on cuda:1 while cuda:0 is current."""
import pytest
import torch

from fastgan.ops import Denoiser, NoiseState, _dispatch, grad_norm_penalty, noisy_clean_batch, nt_losses


def _randn(*shape, device, requires_grad=False):
    """Drawn on the CPU from a fixed seed, so every device gets the same values."""
    g = torch.Generator().manual_seed(sum(shape))
    return torch.randn(*shape, generator=g).to(device).requires_grad_(requires_grad)


def _penalty(device, backend):
    g = _randn(6, 5, device=device, requires_grad=True)
    psi = _randn(6, device=device, requires_grad=True)
    out = grad_norm_penalty(g, psi, "js_real", backend=backend)
    return [out] + list(torch.autograd.grad(out, (g, psi)))


def _nt_losses(device, backend):
    lr = _randn(8, device=device, requires_grad=True)
    lf = _randn(8, device=device, requires_grad=True) * 0.5
    out = nt_losses(lr, lf, 0.3, backend=backend)
    return [out] + list(torch.autograd.grad(out, (lr, lf)))


def _noise(device, backend):
    x = _randn(4, 3, device=device, requires_grad=True)
    sigma = torch.tensor(0.5, device=device, requires_grad=True)
    r, f = noisy_clean_batch(x, x, sigma, state=NoiseState(7, device=device), backend=backend)
    return [r, f] + list(torch.autograd.grad((r.sum(), (f * f).sum()), (x, sigma)))


def _denoiser(device, backend):
    torch.manual_seed(0)
    den = Denoiser(6, 8, 2, backend=backend).to(device)
    loss = den.loss(_randn(5, 6, device=device), _randn(6, 5, device=device).t().contiguous())
    return [loss] + [p.detach() for p in torch.autograd.grad(loss, list(den.parameters()))]


def _bn_closed_form(device, backend):
    from fastgan.ops import bn_closed_form as K

    h, t = _randn(4, 3, 5, device=device), _randn(4, 3, 6, device=device)[..., :5].contiguous()
    gamma = _randn(3, device=device)
    xhat, rstd = K.stats(h, 1e-5, backend)
    out, mt, q = K.centered(xhat, t, rstd, gamma, backend)
    return [xhat, rstd, out, mt, q, *K.vjp(out, t, xhat, t, rstd, gamma, mt, q, backend)]


OPS = {"penalty": _penalty, "nt_losses": _nt_losses, "noise": _noise, "denoiser": _denoiser,
       "bn_closed_form": _bn_closed_form}


@pytest.mark.triton
@pytest.mark.parametrize("name", list(OPS))
def test_every_triton_launch_is_guarded(monkeypatch, name):
    seen = []
    real = _dispatch.on_device

    def recording(t):
        seen.append(t.device)
        return real(t)

    monkeypatch.setattr(_dispatch, "on_device", recording)
    OPS[name]("cpu", "triton")
    assert len(seen) >= 2 and all(d.type == "cpu" for d in seen), f"{name}: forward and backward launches"
    seen.clear()
    OPS[name]("cpu", "cpu")
    assert not seen, "the guard is Triton's: the C++ backends set the device themselves"


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("name", list(OPS))
def test_ops_run_on_the_second_gpu(name, backend):
    want = OPS[name]("cpu", "reference")
    with torch.cuda.device(0):
        got = OPS[name]("cuda:1", backend)
    for g, w in zip(got, want):
        assert g.device == torch.device("cuda:1")
        torch.testing.assert_close(g.cpu(), w, rtol=1e-4, atol=1e-5)  # the noise: one Philox stream everywhere
