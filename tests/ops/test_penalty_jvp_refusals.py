"""mode="jvp" on Ds whose second forward cannot be the first one again: refused with the reason (backward hooks),
run from the state the first forward started from (a function D updating BatchNorm statistics or spectral-norm
vectors it reaches), or handled by a rule (attention through
F.scaled_dot_product_attention, whose fused kernels have neither a double backward nor a usable forward-mode
formula); "auto" takes the double backward for backward-hooked Ds, also when the hook comes after its check."""
import copy
import functools
import weakref

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


@pytest.mark.parametrize("mode, ran", [("jvp", "jvp"), ("double_backward", "double_backward"),
                                       ("auto", "double_backward"), ("auto-as-on-cuda", "jvp")])
def test_attention_on_the_fused_kernels_matches_the_math_kernel_s_double_backward(mode, ran, monkeypatch):
    """The jvp pass has its own attention rule; the double backward (its mode, auto's, auto's one-time check of
    jvp) runs D's forward on torch's math kernel, as the fused ones have no double backward."""
    if mode == "auto-as-on-cuda":
        from helpers import auto_as_on_cuda

        auto_as_on_cuda(monkeypatch)
        mode = "auto"
    torch.manual_seed(0)
    D = AttentionD(math=False).double()
    oracle = copy.deepcopy(D)
    oracle.math = True  # the composite math kernel has the double backward the reference needs
    xr, xf = IMG(5).double(), IMG(5).double()
    want = _grads(oracle, *ref.js_penalty(oracle, xr, xf))
    before = _dispatch.counts[(MODE_OP, ran)]
    got = _grads(D, *js_penalty(D, xr, xf, mode=mode))
    assert _dispatch.counts[(MODE_OP, ran)] == before + 2
    _assert_same(got, want)


def test_attention_dropout_is_refused_by_jvp():
    q = nn.Linear(3, 6).double()

    def D(x):
        h = q(x).reshape(-1, 2, 3)
        return F.scaled_dot_product_attention(h, h, h, dropout_p=0.5).sum((1, 2))
    with pytest.raises(NotImplementedError, match="dropout_p > 0 draws its mask inside the kernel"):
        gradient_penalty(D, VEC(4).double(), mode="jvp")


class _MhaD(nn.Module):
    """Self-attention over an image's rows through nn.MultiheadAttention (or a TransformerEncoderLayer)."""

    def __init__(self, layer: bool):
        super().__init__()
        self.layer = layer
        self.attn = nn.TransformerEncoderLayer(24, 2, 16, dropout=0.0, batch_first=True) if layer \
            else nn.MultiheadAttention(24, 2, batch_first=True)
        self.head = nn.Linear(24, 1)

    def forward(self, x):
        h = x.transpose(1, 2).reshape(x.shape[0], 8, 24)
        h = self.attn(h) if self.layer else self.attn(h, h, h, need_weights=False)[0]
        return self.head(h.mean(1))


@pytest.mark.parametrize("layer", [False, True])
def test_multihead_attention_is_refused_by_jvp_and_auto_takes_the_double_backward(layer, auto_jvp_on_cpu):
    """F.multi_head_attention_forward hides its attention from the jvp pass's rules (torch then failed with
    "forward AD ... not supported" or an in-place error); the double backward runs it on the math kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    D = _MhaD(layer).double()
    xr, xf = IMG(5).double(), IMG(5).double()
    where = "D.attn.self_attn" if layer else "D.attn"
    with pytest.raises(ValueError, match=rf"mode='jvp': {where} is an nn.MultiheadAttention"):
        js_penalty(D, xr, xf, mode="jvp")
    mode, why = penalty_mode(D, xr)
    assert mode == "double_backward" and f"not jvp: {where} is an nn.MultiheadAttention" in why
    oracle = copy.deepcopy(D)
    with sdpa_kernel(SDPBackend.MATH):
        want = _grads(oracle, *ref.js_penalty(oracle, xr, xf))
    _assert_same(_grads(D, *js_penalty(D, xr, xf, mode="auto")), want)


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


@pytest.mark.parametrize("kind", ["forward", "backward"])
def test_global_module_hooks(kind, auto_jvp_on_cpu):
    """Hooks registered for every module: the closed form (which calls no layer's forward) is passed over for
    both kinds, jvp refuses the backward kind (which its dual forward's reverse pass would run), and auto's
    gradients match the reference's with the hook acting."""
    from fastgan.ops import mlp_penalty

    register = {"forward": torch.nn.modules.module.register_module_forward_hook,
                "backward": torch.nn.modules.module.register_module_full_backward_hook}[kind]
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1)).double()
    xr, xf = VEC(6).double(), VEC(6).double()
    assert mlp_penalty.plan(D)[0] is not None
    handle = register((lambda m, i, o: None) if kind == "forward" else (lambda m, gi, go: None))
    try:
        steps, why = mlp_penalty.plan(D)
        assert steps is None and why.startswith("global module forward/backward hooks are registered")
        mode, why = penalty_mode(D, xr)
        assert mode == ("jvp" if kind == "forward" else "double_backward"), why
        if kind == "backward":
            assert "global module backward hooks are registered" in why
            with pytest.raises(ValueError, match="mode='jvp': global module backward hooks are registered"):
                js_penalty(D, xr, xf, mode="jvp")
        oracle = copy.deepcopy(D)
        want = _grads(oracle, *ref.js_penalty(oracle, xr, xf))
        got = _grads(D, *js_penalty(D, xr, xf, mode="auto"))
    finally:
        handle.remove()
    _assert_same(got, want)
    assert mlp_penalty.plan(D)[0] is not None


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


class _Trainer:
    def __init__(self, D, y):
        self.D, self.y = D, y

    def __call__(self, x):
        return self.D(x, self.y)

    def logits(self, x):
        return self.D(x, self.y)


def _calls_global_helper(x):
    return _helper(x)


def _helper(x):
    return D_GLOBAL(x, torch.tensor([0, 1, 2, 0, 1, 2]))


def _bound(bind, D, y):
    """A function D calling D(x, y), reaching D in one of the ways a user's code does."""
    global D_GLOBAL
    D_GLOBAL = D
    ref_d = weakref.ref(D)
    deep, as_set = [{"n": [D]}], {D}
    return {"closure": lambda x: D(x, y), "global": lambda x: D_GLOBAL(x, y),
            "partial": functools.partial(D, y=y), "bound_method": functools.partial(D.forward, y=y),
            "callable_object": _Trainer(D, y), "method_of_a_plain_object": _Trainer(D, y).logits,
            "default_argument": lambda x, D=D: D(x, y), "global_helper": _calls_global_helper,
            "nested_containers": lambda x: deep[0]["n"][0](x, y), "set": lambda x: next(iter(as_set))(x, y),
            "weakref": lambda x: ref_d()(x, y)}[bind]


@pytest.mark.parametrize("bind", ["closure", "global", "partial", "bound_method", "callable_object",
                                  "method_of_a_plain_object", "default_argument", "global_helper",
                                  "nested_containers", "set", "weakref"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_a_function_d_updating_batchnorm_statistics_runs_jvp_with_its_state_advanced_once(bind, momentum):
    """jvp runs the forward twice: what the first wrote into tensors the function reaches (running statistics,
    the batch count, which momentum=None averages by) is put back for the second and left as one forward leaves
    it, however D is reached; the gradients are the double backward's."""
    torch.manual_seed(0)
    D, y = _conditional(), torch.tensor([0, 1, 2, 0, 1, 2])
    D.net[1].momentum = momentum
    oracle = copy.deepcopy(D)
    fn, oracle_fn = _bound(bind, D, y), (lambda x: oracle(x, y))
    try:
        for step in range(3):
            x = VEC(6).double()
            want = ref.gradient_penalty(oracle_fn, x, "js_real")
            want_g = torch.autograd.grad(want[0] + want[1].sum(), list(oracle.parameters()))
            pen, logits = gradient_penalty(fn, x, "js_real", mode="jvp")
            got_g = torch.autograd.grad(pen + logits.sum(), list(D.parameters()))
            torch.testing.assert_close(pen, want[0], rtol=1e-12, atol=0)
            _assert_same(got_g, want_g)
            for (name, a), b in zip(D.named_buffers(), oracle.buffers()):
                torch.testing.assert_close(a, b, rtol=1e-14, atol=0, msg=f"step {step}: {name}")
    finally:
        globals()["D_GLOBAL"] = None


@pytest.mark.parametrize("kind", ["parametrization", "hook"])
def test_a_function_d_with_spectral_norm_runs_its_second_forward_from_the_first_one_s_vectors(kind):
    """Spectral norm's power iteration writes its vectors (out= and copy_) and normalizes the weight with them: a
    second forward from the advanced vectors would normalize by another sigma, and its gradients would differ."""
    torch.manual_seed(0)
    sn = nn.utils.parametrizations.spectral_norm if kind == "parametrization" else nn.utils.spectral_norm
    net = nn.Sequential(sn(nn.Linear(3, 8)), nn.LeakyReLU(0.2), sn(nn.Linear(8, 1))).double()
    oracle = copy.deepcopy(net)

    def grads(model, pen, logits):
        return torch.autograd.grad(pen + logits.sum(), [p for p in model.parameters() if p.requires_grad])

    for _ in range(2):
        x = VEC(6).double()
        want = grads(oracle, *ref.gradient_penalty(lambda x: oracle(x), x, "js_fake"))
        got = grads(net, *gradient_penalty(lambda x: net(x), x, "js_fake", mode="jvp"))
        _assert_same(got, want)
        for a, b in zip(net.buffers(), oracle.buffers()):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_a_function_d_s_create_graph_replay_starts_from_the_same_state_and_leaves_it():
    """The third-order replay (a create_graph backward through the jvp penalty) runs the forward again: from the
    state the first forward started from, the state left as it was."""
    torch.manual_seed(0)
    D, y = _conditional(), torch.tensor([0, 1, 2, 0, 1, 2])
    D.net[1].momentum = None
    oracle = copy.deepcopy(D)
    x = VEC(6).double()
    params, oparams = list(D.parameters()), list(oracle.parameters())
    want = ref.gradient_penalty(lambda x: oracle(x, y), x, "js_real")[0]
    (wg,) = torch.autograd.grad(want, oparams[-1], create_graph=True)
    pen = gradient_penalty(lambda x: D(x, y), x, "js_real", mode="jvp")[0]
    (gg,) = torch.autograd.grad(pen, params[-1], create_graph=True)
    torch.testing.assert_close(torch.autograd.grad(gg.sum(), params[2]), torch.autograd.grad(wg.sum(), oparams[2]),
                               rtol=1e-9, atol=1e-12)
    for a, b in zip(D.buffers(), oracle.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


class _StatefulD(nn.Module):
    """A D keeping state of its own in buffers: a scale tracked under no_grad from its activations, then
    multiplied in (saved for backward); an accumulator written by torch._foreach_add_ and by an inplace=True
    activation (positional, as nn.LeakyReLU passes it); and its input clamped in place."""

    def __init__(self):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(3, 8), nn.Linear(8, 1)
        self.register_buffer("scale", torch.ones(8))
        self.register_buffer("acc", torch.zeros(8))

    def forward(self, x):
        with torch.no_grad():
            x.clamp_(-2, 2)
        h = self.lin1(x)
        with torch.no_grad():
            self.scale.mul_(0.9).add_(0.1 * h.std(0))
            torch._foreach_add_([self.acc], [h.mean(0)])
            F.leaky_relu(self.acc, 0.5, True)
        return self.lin2(torch.tanh(h) * self.scale)


@pytest.mark.parametrize("kind", ["module", "function"])
def test_state_kept_in_plain_tensors_advances_once_and_the_gradients_are_the_double_backward_s(kind):
    """What the double backward differentiates: the no_grad statistic is a constant (forward mode ignores no_grad:
    the jvp pass drops tangents there), the scale saved for backward after its update (the state's restore must
    not count as a modification), the input's clamp D's own."""
    torch.manual_seed(0)
    D, oracle = _StatefulD().double(), None
    oracle = copy.deepcopy(D)
    for step in range(2):
        x = 3 * VEC(6).double()
        want = ref.gradient_penalty(oracle, x.clone(), "js_fake")
        want_g = torch.autograd.grad(want[0] + want[1].sum(), list(oracle.parameters()))
        fn = D if kind == "module" else (lambda x: D(x))
        pen, logits = gradient_penalty(fn, x.clone(), "js_fake", mode="jvp")
        got_g = torch.autograd.grad(pen + logits.sum(), list(D.parameters()))
        torch.testing.assert_close(pen, want[0], rtol=1e-12, atol=0)
        _assert_same(got_g, want_g)
        for a, b in ((D.scale, oracle.scale), (D.acc, oracle.acc)):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=0, msg=f"step {step}")


def test_a_function_d_running_multihead_attention_is_refused_and_its_state_left_as_it_was():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(24, 24), nn.BatchNorm1d(24)).double()
    mha = nn.MultiheadAttention(24, 2, batch_first=True).double()

    def D(x):
        h = net(x.transpose(1, 2).reshape(x.shape[0], 8, 24).reshape(-1, 24)).reshape(x.shape[0], 8, 24)
        return mha(h, h, h, need_weights=False)[0].mean((1, 2))
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match=r"mode='jvp': D runs an nn.MultiheadAttention"):
        gradient_penalty(D, IMG(5).double(), "js_real", mode="jvp")
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_function_d_with_a_lazy_layer_runs_jvp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.LazyBatchNorm1d(), nn.LeakyReLU(0.2), nn.Linear(8, 1)).double()
    pen, logits = gradient_penalty(lambda x: net(x), VEC(6).double(), "js_real", mode="jvp")
    assert torch.isfinite(pen) and int(net[1].num_batches_tracked) == 1


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


class _PaddedAttention(nn.Module):
    """Attention whose last query allows no key (a padding mask): that row's output is 0 (torch's kernels since
    2.5; written out by hand when by_hand, the oracle's form on every torch)."""

    def __init__(self, by_hand: bool):
        super().__init__()
        self.by_hand = by_hand
        self.qkv = nn.Linear(6, 12)
        self.head = nn.Linear(4, 1)
        keep = torch.rand(4, 4) > 0.4
        keep.fill_diagonal_(True)
        keep[3] = False
        self.register_buffer("keep", keep)

    def forward(self, x):
        q, k, v = self.qkv(x.reshape(-1, 4, 6)).chunk(3, -1)
        if self.by_hand:
            s = (q @ k.transpose(-2, -1) / 2).masked_fill(~self.keep, float("-inf"))
            rows = self.keep.any(-1, keepdim=True)
            p = torch.where(rows, torch.softmax(torch.where(rows, s, torch.zeros_like(s)), -1), torch.zeros_like(s))
            o = p @ v
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.keep)
        return self.head(o.mean(1))


def test_attention_rows_that_allow_no_key_give_zero_not_nan():
    q = torch.zeros(1, 2, 2, dtype=torch.float64)
    if torch.isnan(F.scaled_dot_product_attention(q, q, q, attn_mask=torch.zeros(2, 2, dtype=torch.bool))).any():
        # the first forward runs torch's own kernel: before torch 2.5 it gives NaN there, and so does the reference
        pytest.skip(f"torch {torch.__version__}'s attention gives NaN for a row that allows no key")
    torch.manual_seed(0)
    D = _PaddedAttention(by_hand=False).double()
    oracle = copy.deepcopy(D)
    oracle.by_hand = True
    xr, xf = torch.randn(5, 24, dtype=torch.float64), torch.randn(5, 24, dtype=torch.float64)
    want = _grads(oracle, *ref.js_penalty(oracle, xr, xf))
    pen, lr, lf = js_penalty(D, xr, xf, mode="jvp")
    assert torch.isfinite(pen) and torch.isfinite(lr).all()
    _assert_same(_grads(D, pen, lr, lf), want)


def test_functions_reaching_no_updating_module_run_jvp():
    """Constant buffers (an attention mask) and attribute names that match an unrelated global are no refusal."""
    global D_GLOBAL
    torch.manual_seed(0)
    D_GLOBAL = _conditional()  # a training-mode BatchNorm under a global named like the attribute below
    try:
        att = AttentionD().double()

        class Holder:
            pass
        h = Holder()
        h.D_GLOBAL = att
        x = IMG(4).double()
        for fn in (lambda x: att(x), lambda x: h.D_GLOBAL(x)):
            pen, _ = gradient_penalty(fn, x, "js_real", mode="jvp")
            torch.testing.assert_close(pen, ref.gradient_penalty(fn, x, "js_real")[0], rtol=1e-9, atol=0)
    finally:
        D_GLOBAL = None


@pytest.mark.parametrize("mode", ["double_backward", "jvp", "auto"])
def test_a_conditional_d_s_penalty_as_two_terms_is_js_penalty(mode):
    """The README's form for a class-conditional D (labels per batch): gradient_penalty on each batch with the JS
    weight by name, summed, is js_penalty's Omega, gradients included."""
    torch.manual_seed(0)
    D, y_real, y_fake = _conditional(), torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([2, 2, 1, 0, 0, 1])
    oracle = copy.deepcopy(D)
    x_real, x_fake = VEC(6).double(), VEC(6).double()

    class Joint(nn.Module):  # one D over both batches' labels: js_penalty's real and fake terms
        def __init__(self, D):
            super().__init__()
            self.D, self.y = D, y_real

        def forward(self, x):
            return self.D(x, self.y)
    joint = Joint(oracle)
    pen_r, lr = ref.gradient_penalty(joint, x_real, "js_real")
    joint.y = y_fake
    pen_f, lf = ref.gradient_penalty(joint, x_fake, "js_fake")
    want = _grads(oracle, pen_r + pen_f, lr, lf)
    got_r, logits_r = gradient_penalty(lambda x: D(x, y_real), x_real, "js_real", mode=mode)
    got_f, logits_f = gradient_penalty(lambda x: D(x, y_fake), x_fake, "js_fake", mode=mode)
    torch.testing.assert_close(got_r + got_f, pen_r + pen_f, rtol=1e-12, atol=0)
    _assert_same(_grads(D, got_r + got_f, logits_r, logits_f), want)


class _SquareWithoutJvp(torch.autograd.Function):
    """A user's custom Function with a backward only: forward-mode AD cannot run it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class _CustomFunctionD(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Dropout(0.3))
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(_SquareWithoutJvp.apply(self.body(x)))


@pytest.mark.parametrize("kind", ["module", "function"])
def test_a_custom_function_without_jvp_is_refused_with_d_s_state_and_the_generators_as_before(kind):
    torch.manual_seed(0)
    D = _CustomFunctionD().double()
    xr, xf = VEC(6).double(), VEC(6).double()
    before = copy.deepcopy(D.state_dict())
    rng = torch.get_rng_state()  # the dropout draws
    with pytest.raises(NotImplementedError, match=r"mode='jvp': forward-mode AD cannot run D's forward \(torch: "
                                                  r".*jvp.*\); give a custom torch.autograd.Function in D a jvp"):
        js_penalty(D if kind == "module" else (lambda x: D(x)), xr, xf, mode="jvp")
    for k, v in D.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.get_rng_state(), rng)
    pen, lr, lf = js_penalty(D, xr, xf, mode="double_backward")
    assert torch.isfinite(pen)


def test_auto_falls_back_from_a_custom_function_without_jvp_with_a_warning(auto_jvp_on_cpu):
    torch.manual_seed(0)
    D = _CustomFunctionD().double().eval()
    oracle = copy.deepcopy(D)
    xr, xf = VEC(6).double(), VEC(6).double()
    before = _dispatch.counts[(MODE_OP, "double_backward")]
    with pytest.warns(_dispatch.FallbackWarning, match="ForwardModeRefused: mode='jvp': forward-mode AD"):
        got = _grads(D, *js_penalty(D, xr, xf, mode="auto"))
    assert _dispatch.counts[(MODE_OP, "double_backward")] > before
    _assert_same(got, _grads(oracle, *ref.js_penalty(oracle, xr, xf)))


class _UnregisteredStateD(nn.Module):
    """State jvp's buffer copies do not cover: a statistic in a plain tensor attribute and a BatchNorm held in a
    Python list (no submodule), with momentum=None (its batch count matters)."""

    def __init__(self):
        super().__init__()
        self.a, self.h = nn.Linear(3, 8), nn.Linear(8, 1)
        self.ema = torch.zeros(8)
        self.bns = [nn.BatchNorm1d(8, momentum=None)]

    def double(self):
        super().double()
        self.ema = self.ema.double()
        self.bns[0].double()
        return self

    def forward(self, x):
        h = F.silu(self.bns[0](self.a(x)))
        with torch.no_grad():
            self.ema.mul_(0.9).add_(0.1 * h.mean(0))
        return self.h(h)


@pytest.mark.parametrize("mode", ["jvp", "auto-as-on-cuda"])
def test_a_module_s_tensors_outside_its_buffers_advance_once(mode, monkeypatch):
    if mode == "auto-as-on-cuda":
        from helpers import auto_as_on_cuda

        auto_as_on_cuda(monkeypatch)
        mode = "auto"
    torch.manual_seed(0)
    D = _UnregisteredStateD().double()
    oracle = copy.deepcopy(D)
    for step in range(2):
        xr, xf = VEC(6).double(), VEC(6).double() + 1
        want = _grads(oracle, *ref.js_penalty(oracle, xr, xf))
        got = _grads(D, *js_penalty(D, xr, xf, mode=mode))
        _assert_same(got, want)
        torch.testing.assert_close(D.ema, oracle.ema, rtol=1e-13, atol=0, msg=f"step {step}")
        for k, v in D.bns[0].state_dict().items():
            torch.testing.assert_close(v, oracle.bns[0].state_dict()[k], rtol=1e-13, atol=0, msg=f"{k} step {step}")
    assert int(D.bns[0].num_batches_tracked) == 4  # two calls of two batches, one forward each


def test_a_module_with_all_its_state_registered_runs_jvp_unguarded():
    from fastgan.ops import penalty_jvp

    D = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    assert penalty_jvp._guard_for(D, VEC(2)) is None
    assert penalty_jvp._guard_for(_UnregisteredStateD(), VEC(2)) is not None


def test_an_error_only_forward_mode_meets_is_refused_with_the_state_as_before():
    """vmap inside D: its batching rules lack aten::_unpack_dual, a RuntimeError only the dual forward meets."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    bn = nn.BatchNorm1d(3).double()

    def D(x):
        return torch.func.vmap(body)(bn(x))
    before = copy.deepcopy(bn.state_dict())
    with pytest.raises(NotImplementedError, match=r"mode='jvp': forward-mode AD cannot run D's forward \(torch: "
                                                  r".*Batching rule not implemented"):
        js_penalty(D, VEC(6).double(), VEC(6).double(), mode="jvp")
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k


class _ScaledD(nn.Module):
    """Reads its state, then updates it: the second forward must read the value the first read. `alias`: the
    state is a registered buffer also held as a plain attribute (the buffer copies do not reach the attribute)."""

    def __init__(self, alias: bool):
        super().__init__()
        self.lin = nn.Linear(3, 1)
        if alias:
            self.register_buffer("scale", torch.linspace(0.5, 1.5, 3))
            self.s = self.scale
        else:
            self.s = torch.linspace(0.5, 1.5, 3)

    def forward(self, x):
        y = self.lin(torch.tanh(x * self.s.clone()))
        with torch.no_grad():
            self.s.mul_(1.5)
        return y


@pytest.mark.parametrize("alias", [False, True], ids=["plain", "aliased-buffer"])
@pytest.mark.parametrize("mode", ["jvp", "auto-as-on-cuda"])
def test_state_read_before_its_update_gives_the_double_backward_s_gradients(alias, mode, monkeypatch, recwarn):
    if mode == "auto-as-on-cuda":
        from helpers import auto_as_on_cuda

        auto_as_on_cuda(monkeypatch)
        mode = "auto"
    torch.manual_seed(0)
    D = _ScaledD(alias).double()
    D.s = D.scale if alias else D.s.double()
    oracle = copy.deepcopy(D)
    if alias:
        oracle.s = oracle.scale
    x = VEC(5).double()
    want = ref.gradient_penalty(oracle, x, "one")
    got = gradient_penalty(D, x, "one", mode=mode)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=0)
    _assert_same(torch.autograd.grad(got[0], [D.lin.weight]), torch.autograd.grad(want[0], [oracle.lin.weight]))
    torch.testing.assert_close(D.s, oracle.s, rtol=0, atol=0)  # advanced once
    assert not [w for w in recwarn if issubclass(w.category, _dispatch.FallbackWarning)]  # auto's check agreed


@pytest.mark.parametrize("holder, outside", [
    (lambda t, m: [[t]], True), (lambda t, m: {t}, True), (lambda t, m: {"a": t}, True),
    (lambda t, m: __import__("collections").OrderedDict(a=t), True),
    (lambda t, m: __import__("types").SimpleNamespace(t=t), True), (lambda t, m: [m], True),
    (lambda t, m: (1, 2), False), (lambda t, m: {"k": 3}, False), (lambda t, m: lambda: t, False),
], ids=["nested-list", "set", "dict", "ordered-dict", "namespace", "module-list", "ints", "scalars", "closure"])
def test_what_the_state_scan_finds(holder, outside):
    from fastgan.ops import penalty_jvp

    D = nn.Sequential(nn.Linear(3, 2))
    D[0].held = holder(torch.ones(1), nn.BatchNorm1d(2))
    assert penalty_jvp._state_outside_buffers(D) is outside
    standard = [nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.LayerNorm(4), nn.Embedding(3, 4),
                nn.MultiheadAttention(4, 2), nn.LazyLinear(3), nn.ModuleList([nn.Linear(2, 2)]),
                torch.nn.utils.parametrizations.spectral_norm(nn.Linear(3, 4))]
    assert not any(penalty_jvp._state_outside_buffers(m) for m in standard)


def test_a_runtime_error_outside_forward_mode_passes_through_unchanged():
    """Only forward-mode AD's own RuntimeErrors refuse the jvp pass; a device error reaches the caller as it is."""
    lin = nn.Linear(3, 1).double()

    def D(x):
        if fwd_ad_level():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return lin(x)

    def fwd_ad_level():
        from torch.autograd.forward_ad import unpack_dual

        return unpack_dual(x_seen[0]).tangent is not None if x_seen else False
    x_seen = []

    def D_watch(x):
        x_seen[:] = [x]
        return D(x)
    with pytest.raises(RuntimeError, match="^CUDA error: an illegal memory access") as e:
        gradient_penalty(D_watch, VEC(4).double(), "one", mode="jvp")
    assert not isinstance(e.value, NotImplementedError)


class _OpD(nn.Module):
    """A D applying `op` to its hidden (B, 4, 4) activations, after a training-mode BatchNorm (state to put back)."""

    def __init__(self, op):
        super().__init__()
        self.a, self.bn, self.w = nn.Linear(3, 16), nn.BatchNorm1d(16), nn.Parameter(torch.randn(16))
        self.op = op

    def forward(self, x):
        y = self.op(self.bn(self.a(x)).view(-1, 4, 4)).reshape(x.shape[0], -1)
        return (y * self.w[:y.shape[1]]).sum(1)


_EYE = torch.eye(4, dtype=torch.float64)


@pytest.mark.parametrize("op", [
    lambda h: torch.linalg.det(h + 3 * _EYE)[:, None],
    lambda h: torch.logdet(h @ h.transpose(1, 2) + _EYE)[:, None],
    lambda h: torch.linalg.solve(h + 3 * _EYE, h),
    lambda h: torch.cholesky_inverse(torch.linalg.cholesky(h @ h.transpose(1, 2) + _EYE)),
    lambda h: torch.logcumsumexp(h, -1),
    lambda h: F.gumbel_softmax(h, tau=1.0),
    lambda h: F.cross_entropy(h, torch.zeros(h.shape[0], 4, dtype=torch.long), reduction="none"),
], ids=["det", "logdet", "solve", "cholesky_inverse", "logcumsumexp", "gumbel_softmax", "cross_entropy"])
def test_ops_whose_forward_mode_formula_reverse_mode_gets_wrong_are_refused(op):
    """torch's forward-mode formulas of these gave jvp silently wrong parameter gradients (det, logdet, solve,
    cholesky_inverse: 6-90% off) or failed in loss.backward() with "modified by an inplace operation" (an audit,
    2026-12-07): refused before backward, D's state as before, and "auto" takes the double backward."""
    torch.manual_seed(0)
    D = _OpD(op).double()
    xr, xf = VEC(6).double(), VEC(5).double()
    before = copy.deepcopy(D.state_dict())
    with pytest.raises(NotImplementedError, match=r"forward-mode formula of \w+ is not differentiable correctly"):
        js_penalty(D, xr, xf, mode="jvp")
    for k, v in D.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("op", [lambda h: F.softmin(h, -1), lambda h: F.glu(h, 1)],
                         ids=["softmin", "glu"])
def test_softmin_and_glu_run_jvp_with_the_double_backward_s_gradients(op):
    """F.softmin (torch's softmax called inside it, out of the rules' reach) failed in backward with "modified by an
    inplace operation", F.glu with "derivative for aten::glu_jvp is not implemented" (an audit, 2026-12-07)."""
    torch.manual_seed(0)
    D = _OpD(op).double()
    oracle = copy.deepcopy(D)
    xr, xf = VEC(6).double(), VEC(5).double()
    got = _grads(D, *js_penalty(D, xr, xf, mode="jvp"))
    _assert_same(got, _grads(oracle, *ref.js_penalty(oracle, xr, xf)))
    for k, v in D.state_dict().items():
        torch.testing.assert_close(v, oracle.state_dict()[k], rtol=1e-12, atol=0)
