"""Compiled code inside D: a function D calling a torch.compile'd module (a conditional D wrapping a compiled
network), and compiled submodules of an nn.Sequential. AOT autograd's graph has no double backward and no
forward-mode formula, so fastgan runs such code eagerly while the penalty calls D (torch >= 2.6: the compiler's
"force_eager" stance) and the closed form opens compiled layers. Gradients and buffers must equal the uncompiled
D's."""
import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.ops import _dispatch, js_penalty
from fastgan.reference import penalty as ref

from penalty_zoo import DS  # tests/ on sys.path

needs_stances = pytest.mark.skipif(not hasattr(torch.compiler, "set_stance"),
                                   reason="torch < 2.6 has no torch.compile stances: compiled code D calls cannot "
                                          "be run eagerly there (README, 'Penalty gradient modes')")


def _d_loss(pen, lr, lf):
    return F.softplus(-lr).mean() + F.softplus(lf).mean() + pen


def _oracle_grads(D, xr, xf):
    D = copy.deepcopy(D)
    _d_loss(*ref.js_penalty(D, xr, xf)).backward()
    return [p.grad for p in D.parameters()], [b for b in D.buffers()]


def _assert_as_oracle(D, want):
    grads, buffers = want
    assert torch.cat([g.reshape(-1) for g in grads]).norm() > 0
    for p, g in zip(D.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
    for b, w in zip(D.buffers(), buffers):
        torch.testing.assert_close(b, w, rtol=0, atol=0)


def test_the_premise_torch_cannot_differentiate_a_compiled_module_twice():
    """Without fastgan's eager stance, the double backward through compiled code fails in torch (if a torch ever
    differentiates it, the eager detour can go)."""
    D = torch.compile(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double(), backend="aot_eager")
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.square().sum().backward()


@needs_stances
@pytest.mark.parametrize("mode", ["double_backward", "jvp", "auto"])
def test_a_function_d_calling_a_compiled_module_runs_it_eagerly(mode):
    """A conditional D's usual shape: lambda x: compiled(x, y); here with BatchNorm in training mode, whose
    statistics must advance once per forward as in the uncompiled D."""
    factory, make_x, _ = DS["conv_bn"]
    torch.manual_seed(0)
    D = factory().double()
    want = _oracle_grads(D, *(xs := (make_x(5).double(), make_x(5).double() * 0.5)))
    compiled = torch.compile(D, backend="aot_eager")
    ran = "double_backward" if mode == "auto" else mode  # auto takes jvp for nn.Modules only
    before = _dispatch.counts[("gradient_penalty", ran)]
    _d_loss(*js_penalty(lambda x: compiled(x), *xs, mode=mode)).backward()
    assert _dispatch.counts[("gradient_penalty", ran)] == before + 2
    _assert_as_oracle(D, want)


@needs_stances
@pytest.mark.parametrize("mode", ["double_backward", "jvp", "mlp", "auto"])
def test_compiled_layers_of_a_sequential_run_as_their_modules(mode):
    """Compiled layers (one a nested Sequential holding BatchNorm with batch statistics): the double backward and
    jvp run them eagerly, the closed form opens them (auto takes it on CPU)."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(3, 16), nn.LeakyReLU(0.2), nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16)),
                         nn.ReLU(), nn.Linear(16, 1)).double()
    xs = torch.randn(12, 3, dtype=torch.float64), torch.randn(12, 3, dtype=torch.float64) * 0.5
    want = _oracle_grads(base, *xs)
    D = copy.deepcopy(base)
    D[0], D[2] = torch.compile(D[0], backend="aot_eager"), torch.compile(D[2], backend="aot_eager")
    ran = "mlp" if mode == "auto" else mode
    before = _dispatch.counts[("gradient_penalty", ran)]
    _d_loss(*js_penalty(D, *xs, mode=mode)).backward()
    assert _dispatch.counts[("gradient_penalty", ran)] > before
    _assert_as_oracle(D, want)


@needs_stances
def test_compiled_code_is_not_compiled_by_the_penalty_and_compiles_again_afterwards():
    """The stance is the user's again after the penalty, also after an error inside it."""
    compiles = []

    def backend(gm, inputs):
        compiles.append(gm)
        return gm.forward

    torch._dynamo.reset()
    D = torch.compile(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)).double(), backend=backend)
    xs = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="D must map a batch"):
        js_penalty(lambda x: D(x).reshape(2, -1), *xs, mode="jvp")
    for mode in ("jvp", "double_backward"):
        js_penalty(lambda x: D(x), *xs, mode=mode)[0].backward()
    assert compiles == []
    D(xs[0])
    assert len(compiles) == 1
    torch._dynamo.reset()


@needs_stances
def test_inside_a_compiled_step_too():
    """torch.compile of the whole step, D a function calling a compiled module: the penalty's eager part (a graph
    break) runs the compiled module eagerly as well."""
    factory, make_x, _ = DS["conv_bn"]
    torch.manual_seed(0)
    D = factory().double()
    xs = make_x(5).double(), make_x(5).double() * 0.5
    want = _oracle_grads(D, *xs)
    compiled = torch.compile(D, backend="aot_eager")
    torch._dynamo.reset()
    step = torch.compile(lambda xr, xf: _d_loss(*js_penalty(lambda x: compiled(x), xr, xf, mode="jvp")),
                         backend="aot_eager")
    step(*xs).backward()
    torch._dynamo.reset()
    _assert_as_oracle(D, want)


def test_the_penalty_does_not_import_dynamo():
    """eager_compiled_code looks for Dynamo without importing it: nothing can be compiled before it is imported."""
    code = ("import sys, torch, fastgan.ops as ops\n"
            "D = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))\n"
            "x = torch.randn(4, 3)\n"
            "for mode in ('double_backward', 'jvp'):\n"
            "    ops.js_penalty(lambda t: D(t), x, x, mode=mode)[0].backward()\n"
            "assert 'torch._dynamo' not in sys.modules, 'dynamo imported'\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@needs_stances
def test_two_threads_inside_d_at_once_keep_the_stance_until_both_leave():
    """The stance is process-wide: with each call saving and restoring it, thread A leaving reset it while B was
    still inside D (B's double backward then met compiled code: torch's error), and B leaving set force_eager for
    good (every compiled function of the process eager from then on, silently)."""
    import threading

    from fastgan.ops import gradient_penalty

    eval_frame = sys.modules["torch._dynamo.eval_frame"]
    prior = eval_frame._stance
    net = torch.compile(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double(), backend="aot_eager")
    x = torch.randn(4, 3, dtype=torch.float64)
    a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()

    def d_a(t):
        a_in.set()
        assert b_in.wait(60)
        return net(t)

    def d_b(t):
        b_in.set()
        assert a_done.wait(60)  # A has left D (and the penalty) before B's forward runs
        return net(t)

    errors = {}

    def run(name, D, after=None):
        try:
            if name == "B":
                assert a_in.wait(60)
            gradient_penalty(D, x)[0].backward()
        except Exception as e:  # reported below: an assert in a thread would be lost
            errors[name] = repr(e)
        finally:
            if after is not None:
                after.set()

    threads = [threading.Thread(target=run, args=("A", d_a, a_done)), threading.Thread(target=run, args=("B", d_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == {}
    assert eval_frame._stance is prior
