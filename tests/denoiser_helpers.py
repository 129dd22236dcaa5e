"""Shared by the denoiser tests: a fused Denoiser and an nn.Sequential copy with the same state, dispatch-count
deltas, the loss-relevant state of a module, the "within twice the reference's error" check, and one layer's
inputs."""
import copy

import torch
from torch import nn

from fastgan.ops import Denoiser, _dispatch

CPU_BACKENDS = ["reference", "cpu", "triton", "cuda"]
F32_EPS = torch.finfo(torch.float32).eps


def _randomize_bn(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial affine parameters and running statistics, so eval mode and the running-stat update are
    exercised with values the default init would hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)


def make_pair(n=12, hidden=16, depth=2, dtype=torch.float64, backend="cpu", training=True, seed=0):
    torch.manual_seed(seed)
    den = Denoiser(n, hidden, depth, backend=backend, dtype=dtype)
    _randomize_bn(den, seed)
    net = copy.deepcopy(den.net)
    den.train(training)
    net.train(training)
    return den, net


def delta(before):
    return {k: v - before.get(k, 0) for k, v in _dispatch.counts.items() if v - before.get(k, 0)}


def state(module):
    """Loss-relevant state of a Sequential: gradients of every parameter and every buffer."""
    out = {f"grad:{k}": p.grad for k, p in module.named_parameters()}
    out.update({f"buf:{k}": b for k, b in module.named_buffers()})
    return out


def assert_within_twice(name, got, base, truth):
    """||got - truth|| <= 2 ||base - truth|| (+ one fp32 ulp of ||truth||). Norms, not max-abs: a single
    element the fp32 reference happens to round exactly would otherwise set the bar; the ulp floor covers
    values the reference gets exactly (eval-mode running stats), where 2x zero would demand bit-equality."""
    got, base, truth = (t.detach().to("cpu", torch.float64) for t in (got, base, truth))  # any device's, on the host
    err = (got - truth).norm().item()
    err_ref = (base - truth).norm().item()
    floor = F32_EPS * truth.norm().item()
    assert err <= 2 * err_ref + floor, f"{name}: fused error {err:.3g} vs reference error {err_ref:.3g}"


def layer_inputs(seed=0, B=5, N=4):
    """One BatchNorm layer's float64 inputs: y, bias, gamma, beta (requiring grad) and running statistics."""
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    y = mk(B, N).requires_grad_()
    bias = mk(N).requires_grad_()
    gamma = (torch.rand(N, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    beta = mk(N).requires_grad_()
    rm, rv = mk(N), torch.rand(N, generator=g, dtype=torch.float64) + 0.5
    return y, bias, gamma, beta, rm, rv


def assert_loss_step_matches_reference(den, net, loss, h, noise):
    """After loss = den.loss(h, noise, detach=False) and loss.backward(): the loss, the gradients into h and noise,
    and every gradient and buffer of den.net equal the reference's run on net (float64, rounding-level)."""
    from fastgan.reference import denoiser as ref

    h2, noise2 = (t.detach().clone().requires_grad_(True) for t in (h, noise))
    expected = ref.denoiser_loss(net, h2, noise2)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(noise.grad, noise2.grad, rtol=1e-9, atol=1e-11)
    want = state(net)
    for k, v in state(den.net).items():
        torch.testing.assert_close(v, want[k], rtol=1e-9, atol=1e-11, msg=k)


def mean_backward_rows(go, go_div: int, B: int, on_gpu: bool):
    """The (B,) rows autograd's MeanBackward (go_div = B; a sum's backward: 1) gives for a 0-d go on a GPU or the CPU,
    whichever device go is on: torch divides a tensor by a number exactly on the CPU, and on a GPU multiplies it by
    the number's reciprocal rounded first (ATen's div_true_kernel_cuda), 1 ulp off the quotient at times."""
    if on_gpu:
        return go.expand(B) * (torch.ones((), dtype=go.dtype) / go_div).to(go.device)
    return go.expand(B) / go_div
