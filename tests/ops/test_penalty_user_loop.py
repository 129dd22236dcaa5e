"""js_penalty in a GAN training loop written the way an outside user would: their own G and D classes, their own
data, optimizers and loop. Each penalty mode must follow the same training trajectory as fastgan.reference's
straightforward double backward (float64, same seeds), for a convnet D with and without BatchNorm."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.ops import _dispatch, js_penalty
from fastgan.reference import penalty as ref

from helpers import auto_as_on_cuda

GAMMA, STEPS, B = 2.0, 12, 16


class UserG(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 64), nn.Tanh())

    def forward(self, z):
        return self.net(z).view(-1, 1, 8, 8)


class UserD(nn.Module):
    """A small convnet; as_sequential() opts it into the penalty's closed form. Before BatchNorm the convolution has
    no bias, as in DCGAN: BatchNorm cancels it, so its gradient is rounding noise, which Adam would amplify into
    lr-sized steps that differ between any two exact implementations."""

    def __init__(self, batchnorm: bool):
        super().__init__()
        norm = [nn.BatchNorm2d(16)] if batchnorm else []
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.LeakyReLU(0.2),
                                      nn.Conv2d(8, 16, 3, 2, 1, bias=not batchnorm), *norm, nn.LeakyReLU(0.2))
        self.classifier = nn.Linear(16 * 2 * 2, 1)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1)).squeeze(1)

    def as_sequential(self):
        return nn.Sequential(*self.features, nn.Flatten(), self.classifier)


def bars(n, gen):
    """8x8 images with one bright horizontal or vertical bar: the user's dataset."""
    x = torch.full((n, 1, 8, 8), -1.0, dtype=torch.float64)
    pos = torch.randint(0, 8, (n,), generator=gen)
    vertical = torch.rand(n, generator=gen) < 0.5
    for i in range(n):
        if vertical[i]:
            x[i, 0, :, pos[i]] = 1.0
        else:
            x[i, 0, pos[i], :] = 1.0
    return x


def train(mode, batchnorm, compiled=False):
    torch.manual_seed(0)
    G, D = UserG().double(), UserD(batchnorm).double()
    opt_g = torch.optim.Adam(G.parameters(), 2e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-3, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(1)

    def d_loss(x_real, x_fake):
        if mode == "reference":
            pen, lr, lf = ref.js_penalty(D, x_real, x_fake)
        else:
            pen, lr, lf = js_penalty(D, x_real, x_fake, mode=mode)
        return F.softplus(-lr).mean() + F.softplus(lf).mean() + GAMMA / 2 * pen, pen

    if compiled:
        torch._dynamo.reset()  # a trace of its own: another case's compiled code would be reused, and not counted
        d_loss = torch.compile(d_loss, backend="aot_eager")
    penalties = []
    for _ in range(STEPS):
        x_real = bars(B, gen)
        z = torch.randn(B, 4, generator=gen, dtype=torch.float64)
        opt_d.zero_grad()
        loss, pen = d_loss(x_real, G(z).detach())
        loss.backward()
        opt_d.step()
        penalties.append(pen.item())
        opt_g.zero_grad()
        F.softplus(-D(G(z))).mean().backward()  # non-saturating G loss
        opt_g.step()
    return G, D, penalties


def _params(*models):
    return torch.cat([p.detach().reshape(-1) for m in models for p in m.parameters()])


@pytest.fixture(scope="module")
def references():
    return {bn: train("reference", bn) for bn in (False, True)}


@pytest.mark.parametrize("batchnorm", [False, True], ids=["plain", "batchnorm"])
@pytest.mark.parametrize("mode,compiled", [("auto", False), ("auto_as_on_cuda", False), ("mlp", False), ("jvp", False),
                                           ("double_backward", False), ("mlp", True), ("auto", True),
                                           ("auto_as_on_cuda", True)])
def test_training_loop_like_a_user(references, mode, compiled, batchnorm, monkeypatch):
    ran = mode
    if mode == "auto":  # on CPU the closed form, batch statistics included
        ran = "mlp"
    elif mode == "auto_as_on_cuda":  # jvp where the closed form would need batch statistics
        auto_as_on_cuda(monkeypatch)
        mode, ran = "auto", ("jvp" if batchnorm else "mlp")
    before = _dispatch.counts[("gradient_penalty", ran)]
    G, D, pens = train(mode, batchnorm, compiled)
    G_ref, D_ref, pens_ref = references[batchnorm]
    # compiled, the counts count traces (one per compilation), not calls
    assert _dispatch.counts[("gradient_penalty", ran)] >= before + (1 if compiled else 2 * STEPS)
    assert all(p > 0 for p in pens_ref) and len(set(pens_ref)) == STEPS  # the penalty acts and moves
    torch.testing.assert_close(torch.tensor(pens), torch.tensor(pens_ref), rtol=1e-9, atol=0)
    torch.testing.assert_close(_params(G, D), _params(G_ref, D_ref), rtol=1e-9, atol=1e-12)
    for b, b_ref in zip(D.buffers(), D_ref.buffers()):
        torch.testing.assert_close(b, b_ref)
