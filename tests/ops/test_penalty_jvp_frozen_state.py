"""mode="jvp" runs D's forward twice, its second forward on copies of D's state as it was before the first: a frozen
nn.Parameter that D writes in its forward (a spectral norm's power-iteration vector kept so, as SN-GAN's widely
copied SpectralNorm does) was not copied, advanced twice a call, and the logits, penalty and parameter gradients
were 1-12% off the double backward's (an audit's case, 2026-12-06)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.ops import js_penalty
from fastgan.reference import penalty as ref


class _SNLinear(nn.Linear):
    """Spectral norm with its u in a frozen Parameter, advanced in place by each forward."""

    def __init__(self, n_in, n_out):
        super().__init__(n_in, n_out, dtype=torch.float64)
        self.u = nn.Parameter(F.normalize(torch.randn(n_out, dtype=torch.float64), dim=0), requires_grad=False)

    def forward(self, x):
        with torch.no_grad():
            v = F.normalize(self.weight.t() @ self.u, dim=0)
            u = F.normalize(self.weight @ v, dim=0)
            self.u.copy_(u)
        return F.linear(x, self.weight / (u @ self.weight @ v), self.bias)


def _d():
    torch.manual_seed(3)
    return nn.Sequential(_SNLinear(3, 8), nn.LeakyReLU(0.2), _SNLinear(8, 1))


@pytest.mark.parametrize("mode", ["jvp", "auto", "double_backward"])
def test_a_frozen_parameter_d_writes_advances_as_in_the_double_backward(mode):
    g = torch.Generator().manual_seed(1)
    xr, xf = (torch.randn(5, 3, dtype=torch.float64, generator=g) for _ in range(2))
    runs = {}
    for name in ("reference", mode):
        D = _d()
        pen, lr, lf = ref.js_penalty(D, xr, xf) if name == "reference" else js_penalty(D, xr, xf, mode=mode)
        (F.softplus(-lr).mean() + F.softplus(lf).mean() + pen).backward()
        runs[name] = (pen, lr, lf, [p.grad for p in D.parameters() if p.requires_grad], [m.u for m in D[0::2]])
    want, got = runs["reference"], runs[mode]
    for a, b in zip(got[:3], want[:3]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for a, b in zip(got[3] + got[4], want[3] + want[4]):  # the gradients, and u advanced as the reference did
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
