"""A penalty on the input gradient of a statistic of D's logits, T = fn(psi), rather than of psi itself.

Roth et al.'s general regularizer (eq. 19) penalizes f*''(T) ||grad_x T||^2 with T = g_f(psi). Per sample that is
a weight of psi times ||grad_x psi||^2 (fastgan.methods.fdiv), but where D couples its samples (BatchNorm with batch
statistics) the gradient of sum_n T_n at x_m mixes the samples: grad_x sum T = J^T T'(psi), J psi's Jacobian across
the batch, no longer T'(psi_m) times psi's. The double backward takes it as written; mode "jvp" (penalty_jvp) uses
<J^T a, d> = <J d, a>: the forward-mode tangent of D in direction d contracted with a = T'(psi), whose own
dependence on the parameters is differentiated through the dual forward's primal.

root: psi -> r, multiplied into each sample's gradient before squaring (f*''(T) as r^2: alone, f*'' overflows
float32 at |psi| ~ 44 where r ||grad T|| stays finite to ~87).
"""
from __future__ import annotations

import torch

from . import _checks
from . import penalty as _pen


class Statistic:
    """T = fn(psi) elementwise, with an optional elementwise root(psi) (see the module docstring). Both must map a
    (B,) tensor of logits to a (B,) tensor, differentiably."""
    __slots__ = ("fn", "root")

    def __init__(self, fn, root=None):
        if not callable(fn) or (root is not None and not callable(root)):
            raise TypeError("Statistic: fn and root must be callables psi -> (B,) tensor")
        self.fn, self.root = fn, root

    def slope(self, psi: torch.Tensor) -> torch.Tensor:
        """T'(psi), differentiable w.r.t. whatever psi depends on."""
        with torch.enable_grad():
            p = psi if psi.requires_grad else psi.detach().requires_grad_(True)
            (a,) = torch.autograd.grad(self.fn(p).sum(), p, create_graph=psi.requires_grad)
        return a

    def root_values(self, psi: torch.Tensor) -> torch.Tensor:
        """r(psi) without graph, (B,)."""
        with torch.no_grad():
            return _values(self.root(psi), psi)

    def log_root_slope(self, psi: torch.Tensor) -> torch.Tensor:
        """(log r)'(psi) = r'/r without graph: finite where r and r' overflow apart. Taken in float64: in float32 r
        underflows (squared_hellinger's at psi ~ -58, gan's and js's at ~ -174) where r ||grad T|| does not, and 1/r
        made the slope inf or NaN, and with it jvp's gradients, where the double backward's were finite. Where r is 0
        even in float64, r ||grad T|| is too and the slope multiplies 0: taken as 0 there."""
        with torch.enable_grad():
            p = psi.detach().to(torch.float64).requires_grad_(True)
            log_r = torch.log(_values(self.root(p), p))
            if not log_r.requires_grad:  # a constant root
                return torch.zeros_like(psi)
            (d,) = torch.autograd.grad(log_r.sum(), p)
        return torch.where(torch.isfinite(d), d, 0.0).to(psi.dtype)

    def input_grad(self, psi: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """grad_x sum T(psi), x's shape, with r(psi) multiplied into each sample's gradient (in the accumulation
        dtype: in float16 the root overflows at psi ~ 11), with its graph: the double backward's gradient."""
        (g,) = torch.autograd.grad(self.fn(psi).sum(), x, create_graph=True)
        if self.root is None:
            return g
        r = _values(self.root(psi.to(_checks.acc_dtype(psi.dtype))), psi)
        return g.to(r.dtype) * r.reshape((-1,) + (1,) * (g.dim() - 1))

    def double_backward(self, D, x: torch.Tensor, weight, reduction: str, backend, leaves=None, logits=False):
        """The penalty as written, by the double backward (with its graph): what mode "jvp" must agree with.
        leaves: a list that receives the input leaf (penalty_jvp.double_backward_any_order); logits: return
        (penalty, psi)."""
        x = x.detach().requires_grad_(True)
        if leaves is not None:
            leaves.append(x)
        psi = _pen.logits_of(D, x)
        pen = _pen._penalty_of(self.input_grad(psi, x), psi, weight, reduction, backend)
        return (pen, psi) if logits else pen


def _values(r, psi: torch.Tensor) -> torch.Tensor:
    if not isinstance(r, torch.Tensor) or r.shape != psi.shape:
        raise ValueError(f"Statistic: root must return a tensor of the logits' shape {tuple(psi.shape)}, got "
                         f"{tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__}")
    return r
