"""The penalty modes inside torch.compile: the closed form (mode="mlp", or "auto" picking it) is traced, fullgraph
included; the double backward and the jvp path, which AOT autograd cannot differentiate twice, run eagerly inside
the compiled function (a graph break). Gradients and buffers must equal eager mode's."""
import copy

import pytest
import torch
import torch.nn.functional as F

from fastgan.ops import _dispatch, js_penalty, penalty_jvp

from penalty_zoo import DS  # tests/ on sys.path

# BatchNorm with momentum=None divides by its num_batches_tracked buffer, which torch.compile cannot trace with
# fullgraph=True even in a plain forward (mlp_bn_train, conv_bn_train have such a layer)
TRACED = ["mlp_leaky", "mlp_tanh", "mlp_bn_eval", "mlp_spectral", "conv_leaky", "conv_bn_eval_conv_head",
          "conv_spectral", "conv1d_dilated", "conv3d_bn_train"]


def _loss(mode):
    def loss(D, xr, xf):
        pen, lr, lf = js_penalty(D, xr, xf, mode=mode)
        return F.softplus(-lr).mean() + F.softplus(lf).mean() + pen
    return loss


def _grads_and_buffers(D, fn, xr, xf, calls=2):
    for _ in range(calls):  # the second call reuses the compiled graph
        D.zero_grad()
        fn(D, xr, xf).backward()
    return [p.grad.clone() for p in D.parameters()], [b.clone() for b in D.buffers()]


def _compare(name, mode, backend, fullgraph, rtol=1e-12):
    factory, make_x, _ = DS[name]
    _compare_d(factory, make_x, mode, backend, fullgraph, rtol)


def _compare_d(factory, make_x, mode, backend, fullgraph, rtol=1e-12, device="cpu"):
    torch.manual_seed(0)
    D = factory().double().to(device)
    xr, xf = make_x(6).double().to(device), (make_x(6).double() * 0.5 + 0.3).to(device)
    torch._dynamo.reset()
    want = _grads_and_buffers(copy.deepcopy(D), _loss(mode), xr, xf)
    compiled = torch.compile(_loss(mode), backend=backend, fullgraph=fullgraph)
    got = _grads_and_buffers(copy.deepcopy(D), compiled, xr, xf)
    torch._dynamo.reset()
    assert torch.cat([g.reshape(-1) for g in want[0]]).norm() > 0
    for g, w in zip(got[0], want[0]):
        torch.testing.assert_close(g, w, rtol=rtol, atol=1e-14)
    for b, w in zip(got[1], want[1]):
        torch.testing.assert_close(b, w, rtol=rtol, atol=1e-14)


# torch < 2.7: the closed form runs eagerly inside the compiled function (penalty_jvp.CLOSED_FORM_TRACED: traced
# on 2.4-2.6 its gradients were wrong), so no fullgraph there; gradients and buffers must still equal eager mode's
FULLGRAPH = penalty_jvp.CLOSED_FORM_TRACED


@pytest.mark.parametrize("version, traced", [
    ("2.4.1", False), ("2.6.0", False), ("2.6.9", False), ("2.7.0a0+git1234", True), ("2.7.1", True),
    ("2.10.0", True), ("2.11.0+cu130", True), ("2.12.1+cu130", True), ("2.13.0+cpu", True),
    ("2.16.0.dev20270101", True), ("3.0.0", True)])
def test_which_torch_versions_trace_the_closed_form(version, traced):
    """The versions run traced (2.7.1-2.14.1; 2.11.0 since the closed form's logits are its own output under
    compile, mlp_penalty.own_output) and those seen wrong (2.4.1-2.6.0), by minor version: a pre-release or patch
    release counted as its minor release."""
    assert penalty_jvp.closed_form_traced_on(version) is traced


@pytest.mark.parametrize("name", TRACED)
def test_closed_form_compiles_fullgraph(name):
    before = _dispatch.counts[("gradient_penalty", "mlp")]
    _compare(name, "mlp", "aot_eager", fullgraph=FULLGRAPH)
    assert _dispatch.counts[("gradient_penalty", "mlp")] > before


@pytest.mark.parametrize("which", ["logits", "penalty"])
@pytest.mark.parametrize("name", ["mlp_leaky", "conv3d_bn_train"])
def test_gradients_through_the_logits_alone(name, which):
    """A loss of the logits alone, or of the penalty alone: traced on torch 2.11, whose Dynamo sent the gradient of
    a Function output aliasing an intermediate to the wrong output, the logits' gradient came out 0 while the
    penalty's was right (mlp_penalty.own_output; the joint loss mixed the two)."""
    factory, make_x, _ = DS[name]
    torch.manual_seed(0)
    D = factory().double()
    xr, xf = make_x(6).double(), make_x(6).double() * 0.5 + 0.3

    def loss(D, xr, xf):
        pen, lr, lf = js_penalty(D, xr, xf, mode="mlp")
        return lr.sum() - 2 * lf.sum() if which == "logits" else pen

    torch._dynamo.reset()
    want = _grads_and_buffers(copy.deepcopy(D), loss, xr, xf)
    got = _grads_and_buffers(copy.deepcopy(D), torch.compile(loss, backend="aot_eager", fullgraph=FULLGRAPH), xr, xf)
    torch._dynamo.reset()
    assert all(w.norm() > 0 for w in want[0] if w.numel() > 1)
    for g, w in zip(got[0], want[0]):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["conv_leaky", "conv3d_bn_train"])
def test_auto_traces_the_closed_form_fullgraph(name):
    """On CPU "auto" picks the closed form for both (batch statistics too), and it is traced."""
    assert penalty_jvp.auto_mode(DS[name][0](), DS[name][1](2), "mean") == "mlp"
    _compare(name, "auto", "aot_eager", fullgraph=FULLGRAPH)


@pytest.mark.skipif(not penalty_jvp.CLOSED_FORM_TRACED, reason="this torch does not trace the closed form (and "
                    "torch 2.4's inductor needs triton 3.0, fastgan's triton backend >= 3.4)")
@pytest.mark.parametrize("name", ["conv_leaky", "conv3d_bn_train"])
def test_closed_form_under_inductor(name):
    """conv3d_bn_train: the fused BatchNorm passes as custom ops (fake kernels) inside inductor's graph."""
    _compare(name, "mlp", "inductor", fullgraph=True, rtol=1e-10)


@pytest.mark.parametrize("mode", ["double_backward", "jvp", "auto"])
@pytest.mark.parametrize("name", ["conv_bn", "groupnorm_residual", "conv_bn_train"])
def test_other_modes_run_eagerly_inside_a_compiled_function(name, mode, auto_jvp_on_cpu):
    ran = DS[name][2] if mode == "auto" else mode
    before = _dispatch.counts[("gradient_penalty", ran)]
    _compare(name, mode, "aot_eager", fullgraph=False)
    assert _dispatch.counts[("gradient_penalty", ran)] > before


@pytest.mark.parametrize("mode", ["double_backward"])  # jvp's backward runs no eager Function of fastgan's
def test_dynamo_leaves_the_eager_functions_backwards_alone(mode):
    """A compiled step's loss.backward() runs the eager Functions' backwards with Dynamo's frame callback still set:
    Dynamo compiled each as a new frame and broke at its first kernel call (a warning naming fastgan._C, a second
    of compiling); their code is now marked to be skipped (_eager.function)."""
    from torch._dynamo import eval_frame
    from torch._dynamo.utils import counters

    if not hasattr(eval_frame, "set_code_exec_strategy"):
        pytest.skip(f"torch {torch.__version__} has no per-code frame strategy: Dynamo's default there")
    factory, make_x, _ = DS["conv_bn_train"]
    torch.manual_seed(0)
    D = factory().double()
    xr, xf = make_x(4).double(), make_x(4).double()
    want = _grads_and_buffers(copy.deepcopy(D), _loss(mode), xr, xf, calls=1)

    def step(D, xr, xf):
        _loss(mode)(D, xr, xf).backward()

    torch._dynamo.reset()
    counters.clear()
    try:
        D.zero_grad()
        torch.compile(step, backend="aot_eager")(D, xr, xf)
        breaks = "\n".join(counters["graph_break"])
    finally:
        torch._dynamo.reset()
    assert "backward" in breaks  # the premise: the step's own loss.backward() is a graph break
    assert "fastgan._C" not in breaks and "lru_cache" not in breaks, breaks
    for g, w in zip([p.grad for p in D.parameters()], want[0]):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)


def test_double_backward_alone_fails_in_aot_autograd():
    """What the graph break avoids: the same double backward traced by AOT autograd is refused."""
    factory, make_x, _ = DS["conv_bn"]
    D = factory().double()
    x = make_x(4).double()

    def traced(x):
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
        return g.pow(2).sum()

    torch._dynamo.reset()
    with pytest.raises(Exception, match="double backward"):
        torch.compile(traced, backend="aot_eager")(x).backward()
    torch._dynamo.reset()


@pytest.mark.parametrize("mode", ["double_backward", "auto"])
@pytest.mark.parametrize("op", ["js_penalty", "gradient_penalty"])
def test_a_refusal_inside_a_compiled_step_leaves_later_compiled_steps_working(op, mode):
    """After an error raised inside a compiled step, Dynamo runs that frame eagerly ever after but still compiles
    what it calls: every later compiled step taking the double backward failed ("a leaf Variable that requires grad
    is being used in an in-place operation"), whatever its D and inputs (an audit's case, 2026-12-06)."""
    from fastgan import ops

    torch.manual_seed(0)
    D = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.LayerNorm(8), torch.nn.LeakyReLU(0.2),
                            torch.nn.Linear(8, 1))
    xr, xf = torch.randn(6, 3), torch.randn(6, 3)
    def call(a, b, weight="js_real"):  # a bad weight name or feature width: refused inside fastgan
        if op == "js_penalty":
            return ops.js_penalty(D, a, b, mode=mode)[0]
        return ops.gradient_penalty(D, torch.cat([a, b]), weight, mode=mode)[0]

    torch._dynamo.reset()
    try:
        with pytest.raises(ValueError):
            bad = (xr, torch.randn(6, 4)) if op == "js_penalty" else (xr, xf, "nope")
            torch.compile(call, backend="aot_eager")(*bad)
        got = torch.compile(lambda a, b: call(a, b), backend="aot_eager")(xr, xf)
        (grads,) = [torch.autograd.grad(got, list(D.parameters()))]
    finally:
        torch._dynamo.reset()
    want = torch.autograd.grad(call(xr, xf), list(D.parameters()))
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b)


def test_counts_inside_a_compiled_function_count_its_traces(monkeypatch):
    """_dispatch.counts gets its key while Dynamo traces (a Counter's __missing__ broke fullgraph on torch 2.8), once
    per trace: recorded inside the compiled code, the += made Dynamo guard on the count's value, so that every call
    recompiled (until torch's recompile limit sent the function back to eager). Where this torch does not trace the
    closed form (penalty_jvp.CLOSED_FORM_TRACED) it runs eagerly at a graph break, and the counts count its calls."""
    from torch._dynamo.utils import counters

    fresh = copy.copy(_dispatch.counts)
    fresh.clear()
    monkeypatch.setattr(_dispatch, "counts", fresh)
    factory, make_x, _ = DS["conv_leaky"]
    torch.manual_seed(0)
    D = factory().double()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(_loss("mlp"), backend="aot_eager", fullgraph=FULLGRAPH)
    _grads_and_buffers(D, compiled, make_x(4).double(), make_x(4).double())
    traced = _dispatch.counts[("gradient_penalty", "mlp")]
    assert traced >= 1
    for _ in range(3):
        _grads_and_buffers(D, compiled, make_x(4).double(), make_x(4).double())
    assert _dispatch.counts[("gradient_penalty", "mlp")] == (traced if FULLGRAPH else 4 * traced)
    assert counters["stats"]["unique_graphs"] <= 2  # no recompile per call
    torch._dynamo.reset()


def _one_by_one():
    D = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 1), torch.nn.BatchNorm2d(6), torch.nn.Sigmoid(),
                            torch.nn.Conv2d(6, 1, 1), torch.nn.Flatten())
    with torch.no_grad():
        D[1].running_mean.uniform_(-0.5, 0.5)
        D[1].running_var.uniform_(0.5, 2.0)
    return D.eval()


def test_closed_form_with_same_shaped_saved_tensors():
    """Input gradient and output tangent of one shape: torch 2.4's Dynamo swapped such saved tensors in the
    closed form's backward (silently wrong gradients), so there the closed form runs eagerly under compile."""
    _compare_d(_one_by_one, lambda b: torch.randn(b, 1, 1, 1), "mlp", "aot_eager", fullgraph=FULLGRAPH)


@pytest.mark.cuda
@pytest.mark.parametrize("name,mode", [("conv_leaky", "mlp"), ("conv_leaky", "auto"), ("conv_bn", "auto"),
                                       ("conv_bn_train", "jvp")])
def test_cuda_penalty_inside_torch_compile(name, mode):
    """On CUDA: the closed form traced (the joint real+fake pass included), auto's jvp check and jvp run eagerly
    inside the compiled function."""
    factory, make_x, _ = DS[name]
    traced = mode in ("mlp", "auto") and DS[name][2] == "mlp" and FULLGRAPH
    _compare_d(factory, make_x, mode, "aot_eager", fullgraph=traced, rtol=1e-10, device="cuda")


def _compare_dynamic(D, make_x, sizes=(6, 9), device="cpu"):
    """js_penalty's closed form compiled with dynamic=True against eager mode, batch sizes changing between
    calls: gradients and buffers equal after each."""
    D = D.to(device)
    eager, compiled_d = copy.deepcopy(D), copy.deepcopy(D)
    torch._dynamo.reset()
    compiled = torch.compile(_loss("mlp"), backend="aot_eager", fullgraph=FULLGRAPH, dynamic=True)
    for b in sizes:
        xr, xf = make_x(b).double().to(device), (make_x(b).double() * 0.5 + 0.3).to(device)
        want = _grads_and_buffers(eager, _loss("mlp"), xr, xf, calls=1)
        got = _grads_and_buffers(compiled_d, compiled, xr, xf, calls=1)
        for g, w in zip(got[0] + got[1], want[0] + want[1]):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    torch._dynamo.reset()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("name,joint", [("mlp_leaky", False), ("mlp_bn_eval", True), ("conv_leaky", False),
                                        ("conv3d_bn_train", False)])
def test_closed_form_compiles_with_dynamic_shapes(name, joint, device, monkeypatch):
    """dynamic=True makes LeakyReLU's slope and BatchNorm's eps symbolic floats; read inside the real batch's
    Function, the fake batch's could not use them (Dynamo's lift_tracked_freevar_to_input assertion) until
    mlp_penalty.constant_floats specialized them outside. Two passes (conv nets on CPU, or the joint pass off) and
    the joint one."""
    if not joint:
        monkeypatch.setattr(penalty_jvp, "JOINT_MLP_DEVICES", set())
        monkeypatch.setattr(penalty_jvp, "JOINT_MLP_MAX_ROWS", {})
    elif device == "cpu":
        assert penalty_jvp.joint_pass("cpu", 12, conv=name.startswith("conv"))
    factory, make_x, _ = DS[name]
    torch.manual_seed(0)
    _compare_dynamic(factory().double(), make_x, device=device)


def test_changed_slope_recompiles():
    """The specialized slope is guarded: a LeakyReLU slope changed between calls is the one the compiled
    function uses."""
    factory, make_x, _ = DS["mlp_leaky"]
    torch.manual_seed(0)
    D = factory().double()
    eager, compiled_d = copy.deepcopy(D), copy.deepcopy(D)
    torch._dynamo.reset()
    compiled = torch.compile(_loss("mlp"), backend="aot_eager", fullgraph=FULLGRAPH, dynamic=True)
    xr, xf = make_x(6).double(), make_x(6).double() * 0.5 + 0.3
    for slope in (0.2, 0.05):
        eager[1].negative_slope = compiled_d[1].negative_slope = slope
        want = _grads_and_buffers(eager, _loss("mlp"), xr, xf, calls=1)
        got = _grads_and_buffers(compiled_d, compiled, xr, xf, calls=1)
        for g, w in zip(got[0], want[0]):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    torch._dynamo.reset()


@pytest.mark.parametrize("mode", ["double_backward", "jvp", "mlp", "auto"])
def test_a_compiled_d_passed_to_the_penalty_runs_its_module(mode):
    """torch.compile(D) given as D: AOT autograd has no double backward (torch raises there), so every mode runs the
    module it wraps, with the eager module's gradients and buffers."""
    from fastgan.reference import penalty as ref

    factory, make_x, _ = DS["conv_bn_eval_conv_head" if mode == "mlp" else "conv_bn"]
    torch.manual_seed(0)
    D = factory().double()
    oracle = copy.deepcopy(D)
    compiled = torch.compile(D, backend="aot_eager")
    xr, xf = make_x(5).double(), make_x(5).double()
    before = _dispatch.counts[("gradient_penalty", "double_backward" if mode == "auto" else mode)]
    pen, lr, lf = js_penalty(compiled, xr, xf, mode=mode)
    assert _dispatch.counts[("gradient_penalty", "double_backward" if mode == "auto" else mode)] > before
    (F.softplus(-lr).mean() + F.softplus(lf).mean() + pen).backward()
    pen_r, lr_r, lf_r = ref.js_penalty(oracle, xr, xf)
    (F.softplus(-lr_r).mean() + F.softplus(lf_r).mean() + pen_r).backward()
    for p, q in zip(D.parameters(), oracle.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)
    for a, b in zip(D.buffers(), oracle.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_auto_with_a_weight_closing_over_a_learnable_tensor_under_compile():
    """"auto" runs the double backward for such a weight (penalty_jvp.weight_closes_over_grad); under torch.compile
    eagerly, as mode="double_backward" does: the same penalty and the tensor's gradient as eagerly."""
    from fastgan.ops import gradient_penalty

    torch.manual_seed(0)
    D = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LeakyReLU(0.2), torch.nn.Linear(8, 1)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    a = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)

    def step(x):
        return gradient_penalty(D, x, lambda p: a * torch.sigmoid(p), mode="auto")[0]

    want = step(x)
    got = torch.compile(step, backend="eager")(x)
    assert torch.allclose(got, want, rtol=1e-13, atol=0)
    assert torch.allclose(torch.autograd.grad(got, a)[0], torch.autograd.grad(want, a)[0], rtol=1e-13, atol=0)
