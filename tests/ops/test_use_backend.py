"""fastgan.ops.use_backend: the ops called inside run on its backend, checked at each call, over FASTGAN_BACKEND,
under an explicit backend=; restored on exit, exceptions included."""
import contextlib
import threading

import pytest
import torch

from fastgan import ops
from fastgan.ops import _dispatch


def _ran(fn, op):
    before = {k: v for k, v in _dispatch.counts.items() if k[0] == op}
    fn()
    return sorted(b for (o, b), n in _dispatch.counts.items() if o == op and n > before.get((o, b), 0))


def _penalty(**kw):
    D = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x, y = torch.randn(6, 3), torch.randn(5, 3)
    omega, _, _ = ops.js_penalty(D, x, y, **kw)
    omega.backward()
    return omega


def test_ops_inside_run_on_its_backend_and_automatic_selection_returns_after():
    assert _ran(_penalty, "grad_norm_penalty") == ["cpu"]
    with ops.use_backend("reference"):
        assert _ran(_penalty, "grad_norm_penalty") == ["reference"]
        with ops.use_backend("cpu"):  # the innermost wins
            assert _ran(_penalty, "grad_norm_penalty") == ["cpu"]
        assert _ran(_penalty, "grad_norm_penalty") == ["reference"]
        assert _ran(lambda: _penalty(backend="cpu"), "grad_norm_penalty") == ["cpu"]  # an argument wins
    assert _ran(_penalty, "grad_norm_penalty") == ["cpu"]


def test_it_wins_over_the_environment_and_is_restored_after_an_exception(monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", "cuda")  # cannot run on CPU tensors
    with pytest.raises(_dispatch.BackendUnavailable, match=r"FASTGAN_BACKEND='cuda' cannot run here"):
        _penalty()
    with pytest.raises(KeyError):
        with ops.use_backend("reference"):
            assert _ran(_penalty, "grad_norm_penalty") == ["reference"]
            raise KeyError("x")
    assert _dispatch._overrides == []
    with pytest.raises(_dispatch.BackendUnavailable, match=r"FASTGAN_BACKEND='cuda'"):
        _penalty()


def test_a_backend_that_cannot_run_is_named_and_never_falls_back():
    with ops.use_backend("cuda"):
        with pytest.raises(_dispatch.BackendUnavailable,
                           match=r"^grad_norm_penalty: use_backend\('cuda'\) cannot run here: the cuda backend needs "
                                 r"CUDA tensors"):
            _penalty()
    with pytest.raises(ValueError, match=r"^use_backend: backend must be one of .* got 'fast'"):
        with ops.use_backend("fast"):
            pass
    with pytest.raises(ValueError, match=r"got None"):  # None is not "automatic": leave the block out instead
        with ops.use_backend(None):
            pass
    assert _dispatch._overrides == []


def test_a_backward_on_another_thread_sees_it():
    """A process-wide setting, not a context variable: autograd runs CUDA backward passes on its own threads."""
    seen = []
    with ops.use_backend("reference"):
        t = threading.Thread(target=lambda: seen.append(_ran(_penalty, "grad_norm_penalty")))
        t.start()
        t.join()
    assert seen == [["reference"]]


def test_a_block_ending_removes_its_own_entry_when_blocks_interleave():
    """Blocks of two threads end in any order: a ending block removes its own entry, not the innermost one
    (before, A's exit popped B's "cpu" and left A's "reference" in force for B)."""
    a, b = ops.use_backend("reference"), ops.use_backend("cpu")
    a.__enter__()
    b.__enter__()
    try:
        a.__exit__(None, None, None)
        assert _dispatch.requested_backend()[0] == "cpu"
        assert _ran(_penalty, "grad_norm_penalty") == ["cpu"]
    finally:
        b.__exit__(None, None, None)
    assert _dispatch._overrides == []
    assert _dispatch.requested_backend()[0] is None


def _bn_d():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.LeakyReLU(0.2),
                               torch.nn.Linear(8, 1))


@pytest.mark.parametrize("mode", ["mlp", "jvp"])
def test_a_backward_runs_on_the_backend_its_forward_ran_on(mode):
    """The closed form's backward resolves its BatchNorm kernels itself, and jvp's create_graph replay its penalty:
    both run where the forward ran, not where a use_backend block around backward() (another thread's, say) points
    (before, the closed form's backward ran its bn_closed_form kernels on cpu after a forward in a "reference"
    block, and raised BackendUnavailable in a "cuda" block)."""
    D, x, y = _bn_d(), torch.randn(6, 3), torch.randn(5, 3)
    with ops.use_backend("reference"):
        omega, _, _ = ops.js_penalty(D, x, y, mode=mode)
    if mode == "mlp":
        assert _ran(lambda: omega.backward(), "bn_closed_form") == ["reference"]
    else:  # a create_graph backward replays the penalty by the double backward (unrecorded): where "cuda" cannot run
        with ops.use_backend("cuda"):
            grads = torch.autograd.grad(omega, list(D.parameters()), create_graph=True)
        assert all(g.requires_grad for g in grads)
    for block in (ops.use_backend("cpu"), contextlib.nullcontext()):  # a forward outside any block: automatic
        with block:
            omega, _, _ = ops.js_penalty(D, x, y, mode="mlp")
        with ops.use_backend("cuda"):  # cannot run on CPU tensors: the backward does not ask it
            assert _ran(lambda: omega.backward(), "bn_closed_form") == ["cpu"]
    omega, _, _ = ops.js_penalty(D, x, y, mode="jvp")
    with ops.use_backend("cuda"):
        torch.autograd.grad(omega, list(D.parameters()), create_graph=True)


@pytest.mark.parametrize("mode", ["mlp", "jvp"])
def test_blocks_stay_blocks_for_the_penalty_modes(mode):
    """A block's backend is not an explicit backend=: a callable weight (reference-only, which ignores blocks)
    still runs inside one, and a block that cannot run is named as the block (the first version of the pin above
    turned the block into backend=: both regressed)."""
    D, x = _bn_d(), torch.randn(6, 3)
    with ops.use_backend("cpu"):
        pen, _ = ops.gradient_penalty(D, x, lambda p: torch.sigmoid(p) ** 2, mode=mode)
    pen.backward()
    with ops.use_backend("cuda"), pytest.raises(_dispatch.BackendUnavailable, match=r"use_backend\('cuda'\)"):
        ops.js_penalty(D, x, x, mode=mode)


def _outcome(fn):
    try:
        return ("ok", fn())
    except Exception as e:  # noqa: BLE001 - the error is what is compared
        return (type(e).__name__, str(e))


_BACKENDS = [None, "cpu", "reference", "cuda", "triton", "tpu", 3]


@pytest.mark.parametrize("context", ["plain", "block_cpu", "block_reference", "env_reference", "env_cpu", "pin_ref",
                                     "pin_best", "no_C"])
def test_resolve_cpu_answers_as_resolve_does(context, monkeypatch):
    """The ops' plain paths take _dispatch.resolve_cpu for CPU tensors (resolve's layers cost ~5 us of a ~75 us
    noisy_clean_batch call inside a training step): the same backend or the same error as resolve(op, cpu, ...)
    for every backend= under every way of asking for one, and where _C does not load."""
    import warnings

    ctx = contextlib.ExitStack()
    if context.startswith("block_"):
        ctx.enter_context(ops.use_backend(context[6:]))
    elif context.startswith("env_"):
        monkeypatch.setenv("FASTGAN_BACKEND", context[4:])
    elif context == "pin_ref":
        ctx.enter_context(_dispatch.pin(("reference", "use_backend('reference')")))
    elif context == "pin_best":
        ctx.enter_context(_dispatch.pin((None, "")))
    elif context == "no_C":
        from fastgan import _ext

        monkeypatch.setattr(_ext, "available", lambda: (False, "pretend it failed to build"))
    cpu = torch.device("cpu")
    with ctx, warnings.catch_warnings():
        warnings.simplefilter("ignore", _dispatch.FallbackWarning)
        for backend in [*_BACKENDS, __import__("numpy").array(["cpu"])]:
            fast = _outcome(lambda: _dispatch.resolve_cpu("nt_losses", backend))
            slow = _outcome(lambda: _dispatch.resolve("nt_losses", cpu, backend))
            assert fast == slow, (backend, fast, slow)


def test_the_plain_paths_record_the_backend_resolve_picks(monkeypatch):
    """noisy_clean_batch's plain path, nt_losses and grad_norm_penalty on CPU tensors: the cpu kernels by default,
    the reference inside use_backend('reference') and under FASTGAN_BACKEND, the reference with a FallbackWarning
    where _C does not load."""
    from fastgan import _ext

    x = torch.randn(8, 2, requires_grad=True)
    calls = {
        "noisy_clean_batch": lambda: ops.noisy_clean_batch(x, x, torch.randn(8, 2)),
        "nt_losses": lambda: ops.nt_losses(x[:, 0], x[:, 1], 0.5),
        "grad_norm_penalty": lambda: ops.grad_norm_penalty(x, x[:, 0]),
    }
    for op, call in calls.items():
        assert _ran(call, op) == ["cpu"]
        with ops.use_backend("reference"):
            assert _ran(call, op) == ["reference"]
        monkeypatch.setenv("FASTGAN_BACKEND", "reference")
        assert _ran(call, op) == ["reference"]
        monkeypatch.delenv("FASTGAN_BACKEND")
        with monkeypatch.context() as m:
            m.setattr(_ext, "available", lambda: (False, "pretend it failed to build"))
            m.setattr(_dispatch, "_warned", set())
            with pytest.warns(_dispatch.FallbackWarning, match=f"{op}: no fused backend for cpu tensors"):
                assert _ran(call, op) == ["reference"]


@pytest.mark.parametrize("mode", ["double_backward", "jvp", "mlp", "auto"])
def test_a_refused_backend_leaves_d_and_the_rng_as_they_were(mode):
    """A backend the penalty's kernel cannot take (an explicit backend='cpu' with a callable weight, backend='cuda' or
    a use_backend('cuda') block on CPU tensors) is refused before D runs: raised after D's forward, it left the
    BatchNorm's running statistics, spectral norm's u and v and the random-number state advanced (a fuzz audit)."""
    torch.manual_seed(0)
    D = torch.nn.Sequential(torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(3, 8)),
                            torch.nn.BatchNorm1d(8), torch.nn.LeakyReLU(0.2), torch.nn.Linear(8, 1))
    x = torch.randn(6, 3)
    calls = [lambda: ops.gradient_penalty(D, x, lambda p: torch.sigmoid(p), backend="cpu", mode=mode),
             lambda: ops.gradient_penalty(D, x, "js_real", backend="cuda", mode=mode),
             lambda: ops.js_penalty(D, x, x, backend="cuda", mode=mode)]
    for call in calls:
        before, rng = {k: v.clone() for k, v in D.state_dict().items()}, torch.get_rng_state()
        with pytest.raises(_dispatch.BackendUnavailable):
            call()
        assert all(torch.equal(v, before[k]) for k, v in D.state_dict().items())
        assert torch.equal(rng, torch.get_rng_state())
    before = {k: v.clone() for k, v in D.state_dict().items()}
    with ops.use_backend("cuda"), pytest.raises(_dispatch.BackendUnavailable, match=r"use_backend\('cuda'\)"):
        ops.js_penalty(D, x, x, mode=mode)
    assert all(torch.equal(v, before[k]) for k, v in D.state_dict().items())
