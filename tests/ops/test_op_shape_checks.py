"""torch.ops.fastgan.* called directly with arguments whose sizes disagree: the kernels take raw pointers sized from
one argument, so the cpu backend read past the others' ends (garbage, or a segfault) where the reference raised
torch's shape error. Each op now names the argument, before any backend runs (an audit's cases, 2026-12-05)."""
import pytest
import torch

import fastgan.ops  # noqa: F401  (registers the ops)
import fastgan.ops.denoiser  # noqa: F401

ops = torch.ops.fastgan
g, lr, y, used = torch.ones(6, 3), torch.zeros(8), torch.randn(4, 5), torch.tensor([1, 0])

CASES = {
    "penalty logits": (lambda be: ops.grad_norm_penalty(g, torch.zeros(2), 1, be), r"logits must have shape \(6,\)"),
    "penalty grad 1-D": (lambda be: ops.grad_norm_penalty(torch.ones(6), torch.zeros(6), 1, be),
                         r"grad must have shape \(\*, \*\)"),
    "penalty backward go": (lambda be: ops.grad_norm_penalty_backward(torch.ones(1), g, torch.zeros(6), 1, be),
                            r"go must have shape \(6,\)"),
    "penalty terms logits": (lambda be: ops.grad_norm_penalty_terms(g, torch.zeros(5), 1, 1, 6, 1, be),
                             r"logits must have shape \(6,\)"),
    "nt_losses 2-D logits": (lambda be: ops.nt_losses(torch.zeros(4, 2), lr, None, 0.5, 0, 0, False, be),
                             r"logits_real must have shape \(\*,\)"),
    "nt_losses backward gw": (lambda be: ops.nt_losses_backward(torch.tensor(1.), torch.ones(2), None, lr, lr, None,
                                                                0.5, 0, 0, be), r"gw_real must have shape \(8,\)"),
    "nt_losses backward go": (lambda be: ops.nt_losses_backward(torch.ones(2), None, None, lr, lr, None, 0.5, 0, 0,
                                                                be), r"go must have shape \(\)"),
    "noise backward m": (lambda be: ops.noisy_batch_backward(torch.ones(8, 3), None, used, 50, 1, True, False, True,
                                                             False, False, be), r"g_real must have shape \(100, \*\)"),
    "noise backward C": (lambda be: ops.noisy_batch_backward(torch.ones(8, 3), None, used, 4, 2, True, False, False,
                                                             True, False, be), r"C must divide the rows' 3 features"),
    "noise sigma channels": (lambda be: ops.noisy_batch(torch.ones(4, 3), None, torch.ones(2), 0.0, None, used, False,
                                                        be), r"sigma's 2 channels must divide the rows' 3 features"),
    "noise eps rows": (lambda be: ops.noisy_batch(torch.ones(4, 3), None, None, 0.0, torch.ones(1, 3), None, False,
                                                  be), r"eps must have shape \(4, 3\)"),
    "noise x_fake": (lambda be: ops.noisy_batch_draw(torch.ones(4, 3), torch.ones(3, 3), None, 0.5,
                                                     torch.tensor([1, 0, 0]), False, be),
                     r"x_fake must have shape \(4, 3\)"),
    "bn_relu gamma": (lambda be: ops.bn_relu(y, None, torch.ones(2), torch.zeros(5), None, None, True, 0.1, 1e-5, True,
                                             be), r"gamma must have shape \(5,\)"),
    "bn_relu backward shift": (lambda be: ops.bn_relu_backward(y, y, y, torch.ones(5), torch.ones(4), torch.ones(5),
                                                               True, True, be), r"shift must have shape \(5,\)"),
    "recon target": (lambda be: ops.recon_loss(y, None, torch.zeros(2, 5), be), r"target must have shape \(4, 5\)"),
    "recon backward go": (lambda be: ops.recon_loss_backward(torch.ones(3), y, None, y, False, be),
                          r"go must have shape \(4,\)"),
}
# a denoiser of width 5 with one hidden layer of 6
h, W, b = torch.randn(4, 5), [torch.randn(6, 5), torch.randn(5, 6)], [torch.zeros(6), torch.zeros(5)]
gam, bet, rm, rv = [torch.ones(6)], [torch.zeros(6)], [torch.zeros(6)], [torch.ones(6)]
CASES.update({
    "denoiser gamma": (lambda be: ops.denoiser_forward(h, W, b, [torch.ones(2)], bet, rm, rv, True, True, 0.1, 1e-5,
                                                       be), r"gammas\[0\] must have shape \(6,\)"),
    "denoiser weights chain": (lambda be: ops.denoiser_forward(h, [W[0], torch.randn(5, 7)], b, gam, bet, rm, rv,
                                                               True, True, 0.1, 1e-5, be),
                               r"weights\[1\] must have shape \(5, 6\)"),
    "denoiser biases count": (lambda be: ops.denoiser_forward(h, W, b[:1], gam, bet, rm, rv, True, True, 0.1, 1e-5,
                                                              be), r"biases must hold 2 tensors"),
    "denoiser loss noise": (lambda be: ops.denoiser_loss(h, torch.randn(3, 5), 1.0, W, b, gam, bet, rm, rv, True,
                                                         0.1, 1e-5, be), r"noise must have shape \(4, 5\)"),
    "denoiser backward saved": (lambda be: ops.denoiser_loss_backward(torch.ones(4), h, 1.0, W, b, gam, [h], True,
                                                                      True, False, be), r"saved must hold 6 tensors"),
})
hb = torch.randn(4, 6, 3)
CASES.update({
    "bn_cf centered gamma": (lambda be: ops.bn_cf_centered(hb, hb, torch.ones(6), torch.ones(2), be),
                             r"gamma must have shape \(6,\)"),
    "bn_cf centered t": (lambda be: ops.bn_cf_centered(hb, torch.randn(2, 6, 3), torch.ones(6), None, be),
                         r"t must have shape \(4, 6, 3\)"),
    "bn_cf vjp q": (lambda be: ops.bn_cf_vjp(hb, hb, hb, hb, torch.ones(6), None, torch.ones(6), torch.ones(3), be),
                    r"q must have shape \(6,\)"),
    "bn_cf stats 1-D": (lambda be: ops.bn_cf_stats(torch.randn(4), 1e-5, be), r"h must have shape \(B, C, \.\.\.\)"),
})


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", list(CASES))
def test_mismatched_sizes_name_the_argument(case, backend):
    call, match = CASES[case]
    with pytest.raises(ValueError, match=r"^fastgan::\w+: " + match):
        call(backend)


# every tensor argument of the BatchNorm closed-form ops and of nt_losses_backward, each given a wrong size in turn
# (the table above has one case per op: a check dropped from any other argument went unseen; a mutation round)
B, C, S = 4, 6, 3
GOOD = {"rho": (B, C, S), "lam": (B, C, S), "xhat": (B, C, S), "t": (B, C, S), "rstd": (C,), "gamma": (C,),
        "mt": (C,), "q": (C,)}
VJP = ("rho", "lam", "xhat", "t", "rstd", "gamma", "mt", "q")
CENTERED = ("xhat", "t", "rstd", "gamma")


def _bad(shape):
    return (shape[0] + 1,) + shape[1:] if len(shape) == 1 else (shape[0], shape[1] + 1) + shape[2:]


def _args(names, wrong):
    return [torch.randn(*(_bad(GOOD[k]) if k == wrong else GOOD[k])) + (1.0 if k in ("rstd", "gamma") else 0.0)
            for k in names]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("wrong", [k for k in VJP if k != "xhat"])
def test_bn_cf_vjp_names_each_mis_sized_argument(wrong, backend):
    with pytest.raises(ValueError, match=rf"^fastgan::bn_cf_vjp: {wrong} must have shape"):
        ops.bn_cf_vjp(*_args(VJP, wrong), backend)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("wrong", [k for k in CENTERED if k != "xhat"])
def test_bn_cf_centered_names_each_mis_sized_argument(wrong, backend):
    with pytest.raises(ValueError, match=rf"^fastgan::bn_cf_centered: {wrong} must have shape"):
        ops.bn_cf_centered(*_args(CENTERED, wrong), backend)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bn_cf_ops_take_right_sized_arguments(backend):
    ops.bn_cf_vjp(*_args(VJP, None), backend)
    ops.bn_cf_centered(*_args(CENTERED, None), backend)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("side", ["real", "fake"])
def test_nt_losses_backward_names_each_mis_sized_weight_gradient(side, backend):
    """JS weights' gradients sized against their own side's logits (8 real, 5 fake)."""
    lr, lf = torch.zeros(8), torch.zeros(5)
    gw = {"real": torch.ones(8), "fake": torch.ones(5)}
    gw[side] = torch.ones(gw[side].numel() + 1)
    with pytest.raises(ValueError, match=rf"^fastgan::nt_losses_backward: gw_{side} must have shape"):
        ops.nt_losses_backward(torch.tensor(1.), gw["real"], gw["fake"], lr, lf, None, 0.5, 0, 0, backend)
    ops.nt_losses_backward(torch.tensor(1.), torch.ones(8), torch.ones(5), lr, lf, None, 0.5, 0, 0, backend)
