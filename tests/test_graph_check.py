"""fastgan.graph_check on the CPU: the checker finds host reads and values baked in at capture, and the trainer's
steps for every method, penalty mode, noise kind and schedule (what `run.cuda_graph=true` captures on a GPU) have
neither — with the fused ops' CUDA backend glue too, its kernels in the emulator."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from graph_emu import optimizers_as_graphed
from helpers import emulate_cuda
from test_train import TINY, dcgan_roth, tiny_fashion_mnist  # noqa: F401 (a fixture)

import fastgan
from fastgan import config as C
from fastgan.graph_check import capture_hazards
from fastgan.train import _Run


def _toy(scale_in_python=False, read_back=False, branch=False):
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(lin.parameters(), capturable=True)
    x = torch.randn(8, 3)
    t = {"i": 0}

    def step():
        opt.zero_grad(set_to_none=False)
        loss = lin(x).square().mean()
        if scale_in_python:
            loss = loss * 0.99 ** t["i"]  # a schedule computed on the host
        if branch and t["i"] % 2:
            loss = loss + lin.weight.abs().sum()
        loss.backward()
        if read_back:
            assert loss.detach().item() >= 0
        opt.step()
        return loss.detach()

    return step, lambda i: t.update(i=i)


def test_a_clean_step_has_no_hazards():
    step, before = _toy()
    assert capture_hazards(step, before=before) == []


def test_host_read_is_found_with_its_line():
    step, before = _toy(read_back=True)
    found = capture_hazards(step, before=before)
    assert len(found) == 1 and "host read" in found[0] and "_local_scalar_dense" in found[0]
    assert "test_graph_check.py:" in found[0] and "(step)" in found[0]


def test_python_schedule_is_found():
    step, before = _toy(scale_in_python=True)
    found = capture_hazards(step, before=before)
    assert found and all("baked into the graph" in p for p in found)
    assert "aten::mul.Tensor" in found[0] and "test_graph_check.py:" in found[0]


def test_draw_from_an_unregistered_generator_is_found():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(4)

    def step():
        return x + torch.randn(4, generator=gen)

    found = capture_hazards(step)
    assert len(found) == 1 and "not in `generators`" in found[0] and "aten::randn.generator" in found[0]
    assert "test_graph_check.py:" in found[0]
    assert capture_hazards(step, generators=(gen,)) == []
    assert capture_hazards(lambda: x + torch.randn(4)) == []  # the default generator


def test_call_dependent_control_flow_is_found():
    step, before = _toy(branch=True)
    found = capture_hazards(step, before=before)
    assert found and "control flow" in found[0]


def test_a_host_value_made_a_tensor_in_the_step_is_compared_by_value():
    """torch.tensor(schedule) is copied from the host at capture: as baked in as the float itself."""
    w = torch.randn(8)
    sched = {"g": 1.0}
    found = capture_hazards(lambda: w * torch.tensor(sched["g"]), before=lambda i: sched.update(g=0.5 ** i))
    assert len(found) == 1 and "aten::lift_fresh" in found[0] and "'0.0625'" in found[0] and "'0.03125'" in found[0]
    assert capture_hazards(lambda: w * torch.tensor(0.5)) == []  # a constant is fine


@pytest.mark.parametrize("index", ["read", "write"])
def test_boolean_mask_indexing_is_a_host_read(index):
    """x[x > 0] runs nonzero inside aten::index's kernel (the mode never sees an aten::nonzero): on a GPU a sync."""
    w = torch.randn(8)

    def step():
        if index == "read":
            return w[w > 0].sum()
        v = w.clone()
        v[v > 0] = torch.zeros(())  # a tensor value: index_put_ (a Python number is masked_fill_ on torch >= 2.15)
        return v

    found = capture_hazards(step)
    assert len(found) == 1 and "host read" in found[0] and "boolean-mask indexing runs nonzero" in found[0]
    assert capture_hazards(lambda: w[torch.tensor([0, 2])].sum()) == []  # integer indices: no read


def test_a_masked_write_of_a_number_is_a_host_read_only_where_torch_indexes():
    """torch 2.15 runs v[mask] = 0 as masked_fill_, which needs no nonzero and no sync; earlier ones as
    index_put_ with the mask, which does: flagged exactly where the op that ran reads the host."""
    from fastgan.graph_check import _Recorder

    w = torch.randn(8)

    def step():
        v = w.clone()
        v[v > 0] = 0
        return v

    with _Recorder() as recorder:  # graph_check's own record of the ops that ran
        step()
    seen = [name for name, _, _ in recorder.ops]
    indexed = any(name.startswith("aten::index_put") for name in seen)
    assert indexed or "aten::masked_fill_.Scalar" in seen, seen
    found = capture_hazards(step)
    assert len(found) == (1 if indexed else 0), found
    if indexed:
        assert "boolean-mask indexing runs nonzero" in found[0]


@pytest.mark.parametrize("make", [lambda x, n: x.sum(dim=list(range(n))), lambda x, n: torch.cat([x] * n)],
                         ids=["dims", "cat"])
def test_a_list_argument_that_changes_length_is_named(make):
    """Each pair zip saw was equal: next() without a default raised StopIteration out of capture_hazards."""
    x = torch.randn(2, 3, 4)
    t = {"n": 1}
    found = capture_hazards(lambda: make(x, t["n"]), before=lambda i: t.update(n=1 if i <= 4 else 2))  # captured: call 4
    assert len(found) == 1 and "a list that changes length is baked into the graph" in found[0]


CASES = {
    "gan": ["method.name=gan"],
    "roth-double_backward": ["method.name=roth", "method.roth.mode=double_backward"],
    "roth-jvp": ["method.name=roth", "method.roth.mode=jvp"],
    "roth-mlp": ["method.name=roth", "method.roth.mode=mlp"],
    "roth-annealed": ["method.name=roth", "method.roth.schedule=anneal", "method.roth.mode=mlp"],
    "roth-f": ["method.name=roth", "method.loss=fgan", "method.roth.penalty=f", "method.f_divergence=kl"],
    "roth-lazy": ["method.name=roth", "method.roth.every=4", "method.roth.mode=mlp"],
    "nt-generator": ["method.name=nt", "method.nt.noise=generator"],
    "nt-learned-fused": ["method.name=nt", "method.nt.noise=learned_sigma", "method.nt.fused=true"],
    "nt-annealed": ["method.name=nt", "method.nt.noise=fixed", "method.nt.sigma_anneal=linear"],
    "dfm": ["method.name=dfm"],
    "roth+nt+dfm": ["method.name=roth+nt+dfm", "method.nt.noise=learned_sigma", "method.nt.fused=true"],
    "roth+nt+dfm-mlp": ["method.name=roth+nt+dfm", "method.nt.noise=fixed", "method.nt.fused=true",
                        "method.roth.mode=mlp"],
    "d_steps-2": ["method.name=roth", "method.d_steps=2"],
    # noise-only batches: DFM's clean feature passes put D's buffers and the RNG back (D with BatchNorm)
    "nt+dfm-noise-only": ["method.name=nt+dfm", "method.nt.noise=fixed", "method.nt.clean=false",
                          "model.d_batchnorm=true"],
}


def _trainer(tmp_path, overrides, base=TINY):
    cfg = C.coerce(None, [*base, "run.steps=40", f"run.dir={tmp_path / 'run'}", *overrides])
    run = _Run(cfg, resume=False, progress=False)
    optimizers_as_graphed(run.method)
    sample = lambda m: run.dataset.sample(m, run.gen)  # noqa: E731
    return run.method, sample


def _check(method, sample, ts):
    """The hazards of a graph captured at generator iteration ts[3] and replayed at ts[4] (three warm-ups)."""
    return capture_hazards(lambda: method.updates(sample), before=lambda i: method.update_schedules(ts[i - 1]),
                           generators=(method.generator,))


@pytest.mark.parametrize("case", list(CASES))
def test_trainer_steps_are_capturable(tmp_path, case):
    method, sample = _trainer(tmp_path, CASES[case])
    if case == "roth-lazy":  # one graph per kind of iteration: regularized (t = 1, 5, ...) and not
        assert _check(method, sample, [1, 5, 9, 13, 17]) == []
        assert _check(method, sample, [2, 3, 4, 6, 7]) == []
    else:
        assert _check(method, sample, [1, 2, 3, 4, 5]) == []


@pytest.mark.parametrize("mode", ["mlp", "jvp"])
def test_dcgan_batchnorm_step_is_capturable(tmp_path, tiny_fashion_mnist, mode):
    method, sample = _trainer(tmp_path, dcgan_roth(tiny_fashion_mnist, True, mode), base=[])
    assert _check(method, sample, [1, 2, 3, 4, 5]) == []


@pytest.mark.parametrize("case", ["roth+nt+dfm", "roth+nt+dfm-mlp"])
def test_with_the_cuda_backends_glue(tmp_path, monkeypatch, cuda_emu_module, case):
    """The fused ops through their CUDA backend's Python code (what a GPU runs), kernels in the emulator."""
    emulate_cuda(monkeypatch, cuda_emu_module)
    monkeypatch.setenv("FASTGAN_BACKEND", "cuda")
    from fastgan.ops import _dispatch

    before = dict(_dispatch.counts)
    method, sample = _trainer(tmp_path, CASES[case])
    assert _check(method, sample, [1, 2, 3, 4, 5]) == []
    ran = {op for (op, backend), n in _dispatch.counts.items() if backend == "cuda" and n > before.get((op, backend), 0)}
    assert ran, "no fused op ran on the cuda backend"


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_graphed_denoiser_benchmark_step_is_capturable(backend):
    """bench_graph_step.py captures bench_denoiser.loss_step (zero_grad, loss, backward) in a CUDA graph: no host
    read, nothing baked in, on each backend's glue ("reference" is the nn.Sequential)."""
    from helpers import bench_module

    bd = bench_module("bench_denoiser", "bench_denoiser_for_graph_check")
    den, net, h, noise = bd._setup("cpu", backend, 16, 2, 8)
    assert capture_hazards(lambda: bd.loss_step(backend, den, net, h, noise)) == []
    if backend == "reference":  # bench_graph_step.py captures the fused step's GEMMs alone (gemms_step) too
        assert capture_hazards(bd.gemms_step(den, h)) == []


def test_the_features_forward_reads_the_cuda_rng_state_only_outside_a_capture(monkeypatch):
    """torch.cuda.get_rng_state raises during a CUDA graph capture ("current_seed during CUDA graph capture"), and
    the mode cannot see it (not an ATen op): roth+dfm with a penalty mode other than the double backward called
    it in every captured step."""
    from fastgan.methods.step import _cuda_rng_to_restore

    assert not _cuda_rng_to_restore(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert _cuda_rng_to_restore(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert not _cuda_rng_to_restore(torch.device("cuda"))


@pytest.mark.parametrize("keep", ["no", "auto"])
def test_cuda_graph_refuses_data_kept_in_host_memory(keep):
    """A captured step cannot copy its batch from the host: refused before the run folder, naming the field."""
    from types import SimpleNamespace

    from fastgan.train_checks import _check_graph_data

    cfg = C.coerce(None, [f"data.keep_on_device={keep}", "run.cuda_graph=true", "run.device=cuda"])
    with pytest.raises(C.ConfigError, match=rf"^run\.cuda_graph: the data set stays in host memory "
                                            rf"\(data\.keep_on_device={keep}"):
        _check_graph_data(cfg, SimpleNamespace(on_device=False))
    _check_graph_data(cfg, SimpleNamespace(on_device=True))


def test_a_nan_argument_is_the_same_in_every_call():
    assert capture_hazards(lambda: torch.full((2,), float("nan"))) == []


@pytest.mark.parametrize("read", [
    lambda w: torch.equal(w, w + 0), lambda w: w.nonzero(), lambda w: w[(w > 0).to(torch.uint8)].sum(),
    # no op the recorder saw on the CPU: tolist/numpy copy nothing there; output sizes read inside the kernels
    lambda w: w * (2.0 if w.sum().tolist() > 0 else 0.5), lambda w: w * float(w.sum().numpy()),
    lambda w: w * float(np.asarray(w.sum())),
    lambda w: torch.repeat_interleave(torch.arange(4), (w[:4] > 0).long() + 1).sum(),
    lambda w: torch.bincount((w > 0).long()).sum(),
    # linalg's error check, inside the op (found in an audit, 2026-12-07)
    lambda w: torch.linalg.inv(torch.diag(w.abs() + 1)).sum()],
    ids=["equal", "nonzero", "uint8-mask", "tolist", "numpy", "np.asarray", "repeat_interleave", "bincount",
         "linalg.inv"])
def test_other_host_reads_are_found(read):
    w = torch.randn(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uint8 masks are deprecated, and still a host read
        found = capture_hazards(lambda: read(w))
    assert len(found) == 1 and "host read" in found[0], found


def test_values_are_named_in_call_order_and_divergence_is_reported_once():
    w = torch.randn(8)
    sched = {"g": 1.0}
    found = capture_hazards(lambda: w * torch.tensor(sched["g"]), before=lambda i: sched.update(g=0.5 ** i))
    assert found[0].index("'0.0625'") < found[0].index("'0.03125'")   # the captured call is the 4th
    x, t = torch.randn(2, 3, 4), {"n": 1}
    found = capture_hazards(lambda: x.sum(dim=list(range(t["n"]))), before=lambda i: t.update(n=1 if i <= 4 else 2))
    held = re.search(r"held (\d+) values in the captured call and (\d+) in the next", found[0])
    assert held and int(held[1]) < int(held[2])
    step, before = _toy(branch=True)
    found = capture_hazards(step, before=before)
    assert len(found) == 1 and "control flow" in found[0]   # the traces are out of step after the first


def test_ops_added_after_the_captured_calls_are_found():
    """The next call runs every op the captured one did and more after them: no op differs, the count does."""
    w, t = torch.randn(4), {"i": 0}

    def step():
        y = w * 2
        return y + 1 if t["i"] > 4 else y
    found = capture_hazards(step, before=lambda i: t.update(i=i))
    assert len(found) == 1 and "the captured call ran 1 ops and the next one 2" in found[0], found


@pytest.mark.parametrize("read", [lambda t: t.tolist(), lambda t: t.numpy(), lambda t: np.asarray(t)],
                         ids=["tolist", "numpy", "np.asarray"])
def test_a_host_read_before_the_steps_first_op_on_the_tensor_is_found(read):
    """`sched.tolist()` and then `w * sched`: only tensors an op had touched earlier in the call were looked at, so
    this one was missed (an audit's case, 2026-12-06)."""
    sched, w = torch.tensor(0.3), torch.randn(4)
    found = capture_hazards(lambda: (read(sched), (w * sched).sum()))
    assert len(found) == 1 and "host read in the captured call: Tensor." in found[0], found


def test_host_copies_of_tensors_no_op_touched_are_not_host_reads():
    """torch's RNG state snapshots (CPU tensors on a GPU too) read as bytes, and the sizes repeat_interleave is
    told: nothing a graph would fail on; Tensor.tolist/numpy are themselves again after the check."""
    w = torch.randn(8)
    real = torch.Tensor.tolist, torch.Tensor.numpy
    step = lambda: (torch.get_rng_state().numpy().tobytes(),  # noqa: E731
                    torch.repeat_interleave(w, torch.full((8,), 2), output_size=16).sum())
    assert capture_hazards(step) == []
    assert (torch.Tensor.tolist, torch.Tensor.numpy) == real


def test_the_capturable_adam_patch_is_undone():
    import torch.optim.adam as adam

    real = adam._get_capturable_supported_devices
    step, before = _toy()
    assert capture_hazards(step, before=before) == []
    assert adam._get_capturable_supported_devices is real


def test_a_host_list_of_64_values_is_compared_by_value():
    w = torch.randn(64)
    sched = {"g": 1.0}
    found = capture_hazards(lambda: w * torch.tensor([sched["g"]] * 64), before=lambda i: sched.update(g=0.5 ** i))
    assert len(found) == 1 and "aten::lift_fresh" in found[0]


def test_a_draw_from_another_generator_than_the_registered_one_is_found():
    registered, other = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    x = torch.zeros(4)
    found = capture_hazards(lambda: x + torch.randn(4, generator=other), generators=(registered,))
    assert len(found) == 1 and "not in `generators`" in found[0]


def test_a_host_read_inside_a_fused_ops_runner_is_found(monkeypatch):
    # Before: under the recorder (a dispatch mode) the fused ops took their custom-op path, which the recorder saw
    # as one opaque op, while a real run takes the eager path: a host read in a backend's runner went unseen.
    from fastgan.ops import penalty as P

    real = P._FORWARD["cpu"]

    def reading_runner(g, l, w, out):
        float(l.sum())  # planted: what the reference noise op's int(state[0]) was
        real(g, l, w, out)

    monkeypatch.setitem(P._FORWARD, "cpu", reading_runner)
    g, psi = torch.randn(8, 3), torch.randn(8)
    problems = capture_hazards(lambda: fastgan.ops.grad_norm_penalty(g, psi, "js_real", backend="cpu"))
    assert len(problems) == 1 and "_local_scalar_dense" in problems[0] and "reading_runner" in problems[0], problems
    monkeypatch.setitem(P._FORWARD, "cpu", real)
    assert capture_hazards(lambda: fastgan.ops.grad_norm_penalty(g, psi, "js_real", backend="cpu")) == []


@pytest.mark.parametrize("noise", ["fixed", "learned_sigma"])
def test_cuda_graph_refuses_the_reference_noise_op(monkeypatch, noise):
    """The fused NT noise on the reference backend reads its Philox counter on the host (int(state[0])): a
    graphed run failed at the capture after three steps; now refused at setup, naming why it runs there."""
    from fastgan.ops import _dispatch
    from fastgan.train_checks import _check_graph_noise_backend

    cuda = torch.device("cuda", 0)
    cfg = C.coerce(None, ["method.name=nt", f"method.nt.noise={noise}", "method.nt.fused=true",
                          "run.cuda_graph=true", "run.device=cuda"])
    monkeypatch.setenv("FASTGAN_BACKEND", "reference")
    with pytest.raises(C.ConfigError, match=r"^run\.cuda_graph: method\.nt\.fused would draw its noise on the "
                                            r"reference backend \(FASTGAN_BACKEND='reference'\)"):
        _check_graph_noise_backend(cfg, cuda)
    monkeypatch.delenv("FASTGAN_BACKEND")
    usable = {"cuda": False, "triton": False}
    monkeypatch.setattr(_dispatch, "status", lambda b, d: (usable[b], f"no {b} here"))
    with pytest.raises(C.ConfigError, match=r"\(no fused backend runs here \(cuda: no cuda here; triton: no "
                                            r"triton here\)\)"):
        _check_graph_noise_backend(cfg, cuda)
    usable["triton"] = True
    _check_graph_noise_backend(cfg, cuda)
    usable["triton"] = False
    for fine in (["method.nt.fused=false"], ["method.nt.noise=generator"], ["run.cuda_graph=false"]):
        _check_graph_noise_backend(C.coerce(cfg, fine), cuda)


# ------------------------------------------------------------------ from an audit by use, 2026-12-06

def _changing(make_step):
    """capture_hazards of make_step(value) with value a Python float that changes every call, and with it fixed."""
    val = {"v": 0.5}
    step = make_step(val)
    changing = capture_hazards(step, before=lambda i: val.update(v=0.9 ** i))
    fixed = capture_hazards(step, before=lambda i: val.update(v=0.5))
    return changing, fixed


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("op", ["nt_losses", "noisy_clean_batch", "denoiser_sigma"])
def test_a_python_float_given_to_a_fused_op_is_found(op, backend):
    """The fused ops' eager path hands a float mu / sigma to the kernel itself, which no dispatch mode sees: a sigma
    annealed in Python, or Denoiser.sigma set between steps, was silently baked in (an audit's finding)."""
    lr, lf, x = torch.randn(8), torch.randn(8), torch.randn(8, 3)
    den = fastgan.ops.Denoiser(3, 16, depth=2, backend=backend)
    state = fastgan.ops.NoiseState(0)
    if op == "nt_losses":
        def make(val):
            return lambda: fastgan.ops.nt_losses(lr, lf, val["v"], backend=backend)
    elif op == "noisy_clean_batch":
        def make(val):
            return lambda: fastgan.ops.noisy_clean_batch(x, x, val["v"], state=state, backend=backend)
    else:
        def make(val):
            def step():
                den.sigma = val["v"]
                return den.loss(x)
            return step
    changing, fixed = _changing(make)
    assert fixed == [], fixed
    assert len(changing) == 1 and "baked into the graph" in changing[0], changing
    kernel = "fastgan._C." if backend == "cpu" else "Triton kernel "
    assert kernel in changing[0] and "test_graph_check.py:" in changing[0] and ", inside " in changing[0]


def test_printing_and_cpu_copies_are_host_reads():
    w = torch.randn(8)
    for read in (lambda t: print(t), lambda t: t.cpu(), lambda t: f"{t}"):
        found = capture_hazards(lambda: read(w * 2))
        assert len(found) == 1 and "host read in the captured call: Tensor." in found[0], found
    assert capture_hazards(lambda: (w * 2).to(torch.float64)) == []  # not a copy to the host


@pytest.mark.parametrize("kw", [{}, {"fused": True}, {"foreach": True}])
def test_an_optimizer_without_capturable_is_named(kw):
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1)
    x = torch.randn(8, 3)
    opt = torch.optim.Adam(lin.parameters(), **kw)

    def step():
        opt.zero_grad(set_to_none=False)
        lin(x).square().mean().backward()
        opt.step()
    found = capture_hazards(step)
    assert found[0].startswith("Adam steps with capturable=False at ") and "test_graph_check.py:" in found[0]
    assert sum("capturable=False" in p for p in found) == 1
    # a non-capturable Adam's host reads of its step count: one problem for the line, with the count
    assert all("host read in the captured call:" not in p for p in found), found


def test_a_generator_in_the_registered_ones_state_is_still_another_generator():
    registered, other = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x = torch.zeros(4)
    found = capture_hazards(lambda: x + torch.randn(4, generator=other), generators=(registered,))
    assert len(found) == 1 and "not in `generators`" in found[0], found
    assert torch.equal(other.get_state(), torch.Generator().manual_seed(3).get_state()) is False  # it drew
    assert capture_hazards(lambda: x + torch.randn(4, generator=registered), generators=(registered,)) == []
    assert capture_hazards(lambda: x + torch.randn(4, generator=torch.default_generator)) == []


def test_a_long_value_is_cut_and_repeated_differences_at_a_line_are_one_problem():
    w, sched = torch.randn(8, 8), {"g": 1.0}
    found = capture_hazards(lambda: w * torch.full((8, 8), 1.0).mul_(torch.tensor([[sched["g"]] * 8] * 8)),
                            before=lambda i: sched.update(g=0.5 ** i))
    assert len(found) == 1 and " ... " in found[0] and len(found[0]) < 600, found
    idx = {"i": 0}
    data = torch.randn(100, 3)
    found = capture_hazards(lambda: torch.stack([data[idx["i"] + k] for k in range(4)]).sum(),
                            before=lambda i: idx.update(i=i))
    assert len(found) == 1 and "3 more ops issued there differ too" in found[0], found


def _nt_step(seed, capturable=True):
    torch.manual_seed(seed)
    D = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(D.parameters(), lr=1e-3, capturable=capturable)
    st, x, mu = fastgan.ops.NoiseState(seed), torch.randn(16, 8), torch.full((), 0.5)

    def step():
        rb, fb = fastgan.ops.noisy_clean_batch(x, x * 0.5, 1.0, state=st)
        loss = fastgan.ops.nt_losses(D(rb), D(fb), mu)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
    return step


def test_checks_in_threads_and_other_threads_work_are_kept_apart():
    """The checker's patches are process-wide: another thread's kernel launches and optimizer steps were reported
    as the step's, its capturable Adam on CPU tensors was accepted, and two checks at once restored each other's
    patches out of order, leaving them for good (an audit of the ops in threads, 2026-12-06)."""
    import threading

    import torch.optim.adam as adam
    from fastgan import _ext

    real = (_ext.C, torch.Tensor.tolist, torch.Tensor.__repr__, adam._get_capturable_supported_devices)
    steps, results, errors = [_nt_step(0), _nt_step(1)], [None, None], []
    stop = threading.Event()
    refused = []

    def background():  # another model trained meanwhile, with an Adam that is not capturable
        other = _nt_step(2, capturable=False)  # an eager run: its Adam is not capturable
        while not stop.is_set():
            other()
            p = torch.nn.Parameter(torch.zeros(2))
            p.grad = torch.ones(2)
            try:
                torch.optim.Adam([p], capturable=True).step()
            except (AssertionError, RuntimeError):  # torch refuses capturable Adam on CPU tensors
                refused.append(1)
            else:
                errors.append("capturable Adam on CPU tensors accepted in another thread")

    def check(i):
        try:
            results[i] = capture_hazards(steps[i])
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    bg = threading.Thread(target=background)
    bg.start()
    try:
        for _ in range(3):
            checks = [threading.Thread(target=check, args=(i,)) for i in range(2)]
            for t in checks:
                t.start()
            for t in checks:
                t.join()
            assert results == [[], []], results
    finally:
        stop.set()
        bg.join()
    assert not errors, errors[:3]
    assert refused
    assert (_ext.C, torch.Tensor.tolist, torch.Tensor.__repr__, adam._get_capturable_supported_devices) == real


def test_the_tensor_methods_it_patches_are_put_back_as_they_were():
    """tolist, numpy and cpu are inherited from torch._C.TensorBase: set back with setattr, each stayed behind as a
    copy in torch.Tensor's own namespace (an audit for memory and patches, 2026-12-06)."""
    before = {n: n in vars(torch.Tensor) for n in ("tolist", "numpy", "cpu", "__repr__")}
    w = torch.randn(4)
    assert capture_hazards(lambda: w * 2) == []
    with pytest.raises(RuntimeError, match="planted"):
        capture_hazards(lambda: (_ for _ in ()).throw(RuntimeError("planted")), warmup=0)
    assert {n: n in vars(torch.Tensor) for n in before} == before == {"tolist": False, "numpy": False, "cpu": False,
                                                                        "__repr__": True}


@pytest.mark.triton
def test_a_first_call_that_imports_triton_is_compared_with_the_next(tmp_path):
    """fastgan imports triton on its Triton backend's first call: with warmup=0 the captured call imported it, so
    only the next call's launches were recorded, a difference reported as the step's control flow (a review,
    2026-12-06). In a fresh process, where triton is not imported yet."""
    code = ("import sys, torch, fastgan.ops\n"
            "from fastgan.graph_check import capture_hazards\n"
            "assert 'triton' not in sys.modules\n"
            "lr, lf = torch.randn(8), torch.randn(8)\n"
            "print(capture_hazards(lambda: fastgan.ops.nt_losses(lr, lf, 0.5, backend='triton'), warmup=0))\n")
    assert _last_line_interpreted(code, tmp_path) == "[]"


def _last_line_interpreted(code: str, tmp_path) -> str:
    """The last line `code` prints in a fresh process under the Triton interpreter, run from tmp_path (from a
    checkout's root `-c` would import its source tree, not the installed package)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.triton
def test_an_int_given_to_a_triton_kernel_is_compared(tmp_path):
    """A Python int handed to a Triton launch (a step count, a seed) is a kernel argument baked in at capture, as a
    float is; only floats were recorded, so a step count given as an int was missed (an audit, 2026-12-07). In a
    fresh process under the interpreter, as the test above."""
    code = ("import torch, triton, triton.language as tl\n"
            "from fastgan.graph_check import capture_hazards\n"
            "@triton.jit\n"
            "def k(x_ptr, n, step, BLOCK: tl.constexpr):\n"
            "    i = tl.arange(0, BLOCK)\n"
            "    tl.store(x_ptr + i, tl.load(x_ptr + i, mask=i < n) + step, mask=i < n)\n"
            "x, t = torch.zeros(8), {'i': 0}\n"
            "def step():\n"
            "    k[(1,)](x, 8, t['i'], BLOCK=8)\n"
            "print(len(capture_hazards(step, before=lambda i: t.update(i=i))),"
            " capture_hazards(step, before=lambda i: t.update(i=3)))\n")
    assert _last_line_interpreted(code, tmp_path) == "1 []"
