"""mode="jvp" on Ds whose second forward cannot be the first one again: refused with the reason (backward hooks, a
function D reaching modules whose buffers a forward updates), or handled by a rule (attention through
F.scaled_dot_product_attention, whose fused kernels have neither a double backward nor a usable forward-mode
formula); "auto" takes the double backward for backward-hooked Ds, also when the hook comes after its check."""
import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.ops import _dispatch, gradient_penalty, js_penalty, penalty_mode
from fastgan.reference import penalty as ref

from penalty_zoo import IMG, VEC, AttentionD  # tests/ on sys.path

MODE_OP = "gradient_penalty"


def _grads(D, pen, lr, lf):
    loss = F.softplus(-lr).mean() + F.softplus(lf).mean() + pen
    return torch.autograd.grad(loss, [p for p in D.parameters() if p.requires_grad])


def _assert_same(got, want, rtol=1e-9):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=rtol, atol=rtol * 1e-3)


def test_attention_on_the_fused_kernels_matches_the_math_kernel_s_double_backward():
    torch.manual_seed(0)
    D = AttentionD(math=False).double()
    oracle = copy.deepcopy(D)
    oracle.math = True  # the composite math kernel has the double backward the reference needs
    xr, xf = IMG(5).double(), IMG(5).double()
    want = _grads(oracle, *ref.js_penalty(oracle, xr, xf))
    before = _dispatch.counts[(MODE_OP, "jvp")]
    got = _grads(D, *js_penalty(D, xr, xf, mode="jvp"))
    assert _dispatch.counts[(MODE_OP, "jvp")] == before + 2
    _assert_same(got, want)


def test_attention_dropout_is_refused_by_jvp():
    q = nn.Linear(3, 6).double()

    def D(x):
        h = q(x).reshape(-1, 2, 3)
        return F.scaled_dot_product_attention(h, h, h, dropout_p=0.5).sum((1, 2))
    with pytest.raises(NotImplementedError, match="dropout_p > 0 draws its mask inside the kernel"):
        gradient_penalty(D, VEC(4).double(), mode="jvp")


def _d():
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.LeakyReLU(0.2), nn.Linear(8, 1)).double()


@pytest.mark.parametrize("hook", ["full_backward", "backward_pre", "full_backward_rescaling"])
def test_backward_hooks_are_refused_by_jvp_and_auto_takes_the_double_backward(hook, auto_jvp_on_cpu):
    torch.manual_seed(0)
    D = _d()
    xr, xf = VEC(6).double(), VEC(6).double()
    pen, lr, lf = js_penalty(D, xr, xf, mode="auto")  # auto's check passes: its verdict is remembered for D
    assert penalty_mode(D, xr)[0] == "jvp"
    if hook == "full_backward":
        D[2].register_full_backward_hook(lambda m, gi, go: None)
    elif hook == "backward_pre":
        D[2].register_full_backward_pre_hook(lambda m, go: None)
    else:  # a module hook that rescales the gradient of its output
        D[2].register_full_backward_hook(lambda m, gi, go: (2 * gi[0],))
    with pytest.raises(ValueError, match=r"mode='jvp': D\.2 has backward hooks"):
        js_penalty(D, xr, xf, mode="jvp")
    mode, why = penalty_mode(D, xr)
    assert mode == "double_backward" and "D.2 has backward hooks" in why
    oracle = copy.deepcopy(D)
    want = _grads(oracle, *ref.js_penalty(oracle, xr, xf))
    before = _dispatch.counts[(MODE_OP, "double_backward")]
    got = _grads(D, *js_penalty(D, xr, xf, mode="auto"))
    assert _dispatch.counts[(MODE_OP, "double_backward")] == before + 2
    _assert_same(got, want)


D_GLOBAL = None


def _conditional():
    """A class-conditional D: (x, y) -> logits, as the README passes it (bound to its labels)."""
    class CondD(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(3, 3)
            self.net = _d()

        def forward(self, x, y):
            return self.net(x + self.embed(y))
    return CondD().double()


@pytest.mark.parametrize("bind", ["closure", "global", "partial", "bound_method"])
def test_a_function_reaching_modules_with_buffers_in_training_mode_is_refused_by_jvp(bind):
    global D_GLOBAL
    torch.manual_seed(0)
    D, y = _conditional(), torch.tensor([0, 1, 2, 0, 1, 2])
    D_GLOBAL = D
    fn = {"closure": lambda x: D(x, y), "global": lambda x: D_GLOBAL(x, y),
          "partial": functools.partial(D, y=y), "bound_method": functools.partial(D.forward, y=y)}[bind]
    x = VEC(6).double()
    with pytest.raises(ValueError, match=r"D is a function that runs CondD\.net\.1 \(BatchNorm1d\), whose buffers "
                                         r"a forward in training mode updates"):
        gradient_penalty(fn, x, "js_real", mode="jvp")
    D.eval()  # running statistics read, not updated: both forwards see the same D
    pen, logits = gradient_penalty(fn, x, "js_real", mode="jvp")
    want = ref.gradient_penalty(fn, x, "js_real")
    torch.testing.assert_close(pen, want[0], rtol=1e-12, atol=0)
    D_GLOBAL = None


def test_the_conditional_d_as_a_module_runs_jvp_with_its_buffers_advanced_once():
    torch.manual_seed(0)
    D, y = _conditional(), torch.tensor([0, 1, 2, 0, 1, 2])

    class Bound(nn.Module):  # the README's advice: the labels as an attribute
        def __init__(self, D, y):
            super().__init__()
            self.D, self.y = D, y

        def forward(self, x):
            return self.D(x, self.y)
    oracle = copy.deepcopy(D)
    xr, xf = VEC(6).double(), VEC(6).double()
    want = _grads(oracle, *ref.js_penalty(lambda x: oracle(x, y), xr, xf))
    got = _grads(Bound(D, y), *js_penalty(Bound(D, y), xr, xf, mode="jvp"))
    _assert_same(got, want)
    for a, b in zip(D.buffers(), oracle.buffers()):
        assert torch.equal(a, b)
