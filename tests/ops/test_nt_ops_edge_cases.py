"""Edge cases of the NTGAN ops found by an adversarial review: calls a user makes that broke (a float sigma that
changes under torch.compile, the default noise state first used inside a compiled function or under
inference_mode, a non-finite float mu, Triton's int32 logit offsets), and bn_relu cases still open."""
import math

import pytest
import torch
import torch._dynamo

from fastgan.ops import NoiseState, default_noise_state, noisy_clean_batch, nt_losses
from fastgan.ops import noise_state
from fastgan.reference import nt_losses as ref


def _compile(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


# ------------------------------------------------------------------ noisy_clean_batch under torch.compile

def test_compiled_batch_takes_a_float_sigma_that_changes_between_calls():
    """An annealed fixed sigma: from its second value on Dynamo traces the float symbolically, where
    math.isfinite cannot run (fullgraph=True raised Unsupported)."""
    x = torch.randn(4, 3)
    f = _compile(lambda x, s, st: noisy_clean_batch(x, x, s, state=st, backend="cpu"))
    for sigma in (0.1, 0.2, 0.3):
        got = f(x, sigma, NoiseState(5).tensor)
        want = noisy_clean_batch(x, x, sigma, state=NoiseState(5), backend="cpu")
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


def test_default_state_first_used_inside_compile_is_seeded_like_eager(monkeypatch):
    """Without `state`, the first call creating the default state inside a compiled function raised (a guard
    on the data-dependent seed); it is now created once, as an eager first call would, and advances."""
    monkeypatch.setattr(noise_state, "_default_states", {})
    x = torch.zeros(4, 3)
    f = _compile(lambda x: noisy_clean_batch(x, None, 1.0, backend="cpu")[0])
    torch.manual_seed(123)
    a, b = f(x), f(x)
    assert not torch.equal(a, b) and default_noise_state("cpu").offset == 6
    monkeypatch.setattr(noise_state, "_default_states", {})
    torch.manual_seed(123)
    assert torch.equal(noisy_clean_batch(x, None, 1.0, backend="cpu")[0], a)


# ------------------------------------------------------------------ NoiseState under inference_mode

@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_states_created_under_inference_mode_work_outside_it(monkeypatch, backend):
    """A first call in an inference_mode evaluation created the default state as an inference tensor: the
    reference backend's draw, manual_seed and set_state then raised outside inference_mode."""
    monkeypatch.setattr(noise_state, "_default_states", {})
    x = torch.randn(4, 3)
    with torch.inference_mode():
        noisy_clean_batch(x, None, 0.5, backend=backend)
        own = NoiseState(7)
        copy = own.clone()
    for st in (default_noise_state("cpu"), own, copy):
        noisy_clean_batch(x, None, 0.5, state=st, backend=backend)
        st.set_state(st.manual_seed(3).get_state())
        assert (st.seed, st.offset) == (3, 0)


@pytest.mark.parametrize("bad", [[5, 0, 7], [-5, 0, 0], [5, -1, 0]])
def test_set_state_refuses_what_get_state_never_returns(bad):
    """A hand-made [seed, offset, ticket] with a nonzero ticket was taken: the cuda and triton kernels then never
    advanced the offset (the last program is the one that draws ticket n - 1), so every call drew the same noise."""
    st = NoiseState(1)
    with pytest.raises(ValueError, match="state "):
        st.set_state(torch.tensor(bad))
    assert st.get_state().tolist() == [1, 0, 0]


def test_set_state_names_a_meta_tensor():
    """torch's 'Cannot copy out of meta tensor; no data!' (a NotImplementedError) named no argument."""
    st = NoiseState(1)
    with pytest.raises(ValueError, match="^state is a meta tensor"):
        st.set_state(torch.zeros(3, dtype=torch.int64, device="meta"))
    assert st.get_state().tolist() == [1, 0, 0]


# ------------------------------------------------------------------ nt_losses

@pytest.mark.parametrize("mu", [math.nan, math.inf, -math.inf, -0.25, 1.5])
def test_float_mu_outside_the_unit_interval_is_refused(mu):
    """A NaN mu made every loss NaN without a word; one outside [0, 1] weighs a part negatively."""
    with pytest.raises(ValueError, match=r"mu must be in \[0, 1\]"):
        nt_losses(torch.zeros(4), torch.zeros(4), mu)


@pytest.mark.parametrize("mu", [0, 1, 0.0, 1.0])
def test_float_mu_at_the_ends_of_the_unit_interval_weighs_one_part(mu):
    lr, lf = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(nt_losses(lr, lf, mu), ref.nt_losses(lr, lf, float(mu)))


def test_compiled_losses_still_take_a_float_mu_that_changes_between_calls():
    lr, lf = torch.randn(6), torch.randn(6)
    f = _compile(lambda lr, lf, mu: nt_losses(lr, lf, mu, backend="cpu"))
    for mu in (0.1, 0.2, 0.3):
        torch.testing.assert_close(f(lr, lf, mu), nt_losses(lr, lf, mu, backend="cpu"))


class _Launches:
    """Stands in for a Triton kernel, recording each launch's arguments."""

    def __init__(self, kernel, seen, sizes_at):
        self.kernel, self.seen, self.sizes_at = kernel, seen, sizes_at

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.seen.append(args[self.sizes_at:self.sizes_at + 4])  # NR, NF, sr, sf
            return launch(*args, **kwargs)
        return run


@pytest.mark.parametrize("loss,js", [("d", True), ("g", False)])
def test_triton_strided_logits_past_int32_offsets_are_read_contiguously(monkeypatch, loss, js):
    """The Triton kernels index logits with k * stride in int32 (kept: an int64 variant spills registers,
    tests/test_triton_compile.py); a side whose last offset reaches DENSE_FROM (2**31, lowered here) is passed
    as a contiguous copy, with the same values and gradients."""
    from fastgan.kernels import nt_losses as kn

    base = 3 * torch.randn(8, 5, dtype=torch.float64)
    want = None
    for dense_from in (2 ** 31, 36, 35, 16):  # 35: the last offset itself, on the limit (an off-by-one there)
        monkeypatch.setattr(kn, "DENSE_FROM", dense_from, raising=False)
        seen = []
        monkeypatch.setattr(kn, "_forward_kernel", _Launches(kn._forward_kernel, seen, 8))
        monkeypatch.setattr(kn, "_backward_kernel", _Launches(kn._backward_kernel, seen, 9))
        src = base.clone().requires_grad_()
        lr, lf = src[:, 1], src[:, 3:4]  # strides 5: last offsets 35 and 35
        out = nt_losses(lr, lf, 0.3, loss=loss, js_weights=js, backend="triton")
        outs = out if js else (out,)
        total = outs[0] + sum((w * torch.linspace(-1, 1, w.numel()).view(w.shape)).sum() for w in outs[1:])
        got = (*outs, torch.autograd.grad(total, src)[0])
        monkeypatch.undo()
        assert len(seen) == 2
        for n_r, n_f, s_r, s_f in seen:
            assert all(n < 2 or (n - 1) * s < dense_from for n, s in ((n_r, s_r), (n_f, s_f))), (dense_from, seen)
        if want is None:
            want = got
        for a, b in zip(got, want):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("n", [8, 5000])  # 5000: the Triton forward's partial sums (more than 4096 logits)
def test_the_generator_kind_ignores_real_logits_at_the_op_level(backend, n):
    """fastgan::nt_losses with kind=1 (G) and real logits given: G's loss has no real-side term. The public
    nt_losses passes none for loss="g", but the op is public too; Triton's real-side programs ignored GEN."""
    import importlib

    NT = importlib.import_module("fastgan.ops.nt_losses")
    g = torch.Generator().manual_seed(0)
    lr, lf = torch.randn(n, generator=g), torch.randn(n, generator=g)
    want = NT._run_forward(lr[:0], lf, None, 0.3, 1, 0, False, "reference")[0]
    got = NT._run_forward(lr, lf, None, 0.3, 1, 0, False, backend)[0]
    torch.testing.assert_close(got, want)
    dr, df = NT._run_backward(torch.tensor(1.0), None, None, lr, lf, None, 0.3, 1, 0, backend)
    assert torch.equal(dr, torch.zeros_like(dr))
    torch.testing.assert_close(df, NT._run_backward(torch.tensor(1.0), None, None, lr[:0], lf, None, 0.3, 1, 0,
                                                    "reference")[1])


# ------------------------------------------------------------------ nt_losses at saturated logits


def _second_derivative(fn, psi, dtype):
    logits = torch.tensor([psi, -0.2], dtype=dtype, requires_grad=True)
    (g,) = torch.autograd.grad(fn(logits), logits, create_graph=True)
    return torch.autograd.grad(g[0], logits)[0][0].item()


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("loss,psi", [("g", -20.0), ("g", -10.0), ("d", 17.0), ("d", 30.0)])
def test_second_derivative_at_saturated_logits(backend, loss, psi):
    """sigmoid(z) * sigmoid(-z), not s * (1 - s): 1 - s cancelled to 0 in float32 from z ~ 17 (a confident D's
    fake logits for the G loss, or the D loss's fake logits >> 0), so the second derivative came out 0."""
    lr = torch.tensor([0.1, 0.2])
    if loss == "g":
        want = _second_derivative(lambda lf: ref.g_loss(lf, 0.3), psi, torch.float64)
        got = _second_derivative(lambda lf: nt_losses(None, lf, 0.3, loss="g", backend=backend), psi, torch.float32)
    else:
        want = _second_derivative(lambda lf: ref.d_loss(lr.double(), lf, 0.3), psi, torch.float64)
        got = _second_derivative(lambda lf: nt_losses(lr, lf, 0.3, loss="d", backend=backend), psi, torch.float32)
    assert want > 0
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("sigma", [-1.0, -1e-30, -math.inf])
def test_negative_float_sigma_is_refused(sigma):
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="noise \\(sigma\\) must be"):
        noisy_clean_batch(x, x, sigma)
    noisy_clean_batch(x, x, 0.0)  # zero is a valid sigma (no noise)


@pytest.mark.parametrize("loss,js", [("d", True), ("g", False)])
@pytest.mark.parametrize("n", [700, 5000])  # 5000: the forward's partial sums
def test_triton_int64_variant_gives_the_same_losses_and_gradients(monkeypatch, loss, js, n):
    """The Triton kernels' int64 variant (WIDE: sides of 2**31 - 8192 logits or more, lowered here to every
    size) gives the narrow variant's values and gradients bit for bit."""
    from fastgan.kernels import nt_losses as kn

    base = 3 * torch.randn(2, n, dtype=torch.float32, generator=torch.Generator().manual_seed(n))
    assert not kn._wide(n, n)
    got = []
    for wide_from in (kn.WIDE_FROM, 0):
        monkeypatch.setattr(kn, "WIDE_FROM", wide_from)
        src = base.clone().requires_grad_()
        outs = nt_losses(src[0], src[1], 0.3, loss=loss, js_weights=js, backend="triton")
        outs = outs if js else (outs,)
        total = outs[0] + sum((w * torch.linspace(-1, 1, w.numel())).sum() for w in outs[1:])
        got.append((*outs, torch.autograd.grad(total, src)[0]))
    for a, b in zip(*got):
        assert torch.equal(a, b)


def _run_only_programs(monkeypatch, programs, selected):
    """The Triton interpreter runs only `selected` of a launch's `programs` (its loop over the grid's first
    dimension patched); returns a list that the patched loop appends to when it runs."""
    import triton.runtime.interpreter as interp

    ran = []

    def only_selected(*args):
        if args == (programs,):
            ran.append(True)
            return selected
        return range(*args)

    monkeypatch.setattr(interp, "range", only_selected, raising=False)
    return ran


def _forward_partials(monkeypatch, n, selected, psi=0.3, chunk=4096):
    """The Triton forward's per-chunk partial sums of G's loss on a stride-0 side of n logits psi (4 bytes of
    storage), only the `selected` chunks run (the others stay NaN); and one term's value."""
    from fastgan.kernels import nt_losses as kn

    programs = -(-n // chunk)
    ran = _run_only_programs(monkeypatch, programs, selected)
    partials = torch.full((programs,), float("nan"))
    kn.forward(torch.empty(0), torch.full((1,), psi).expand(n), None, 0.0, True, True, torch.empty(()), None, None,
               partials, chunk)
    assert ran, "the interpreter's grid loop was not the one patched"
    return partials, math.log1p(math.exp(-psi)) / (n - n // 2)  # G's loss, mu = 0: (1 - mu) / n_noisy a term


def test_triton_forward_past_2_31_logits_indexes_in_int64(monkeypatch):
    """A side of 2**31 + 8192 logits through the Triton forward, with only the programs around the int32 wrap run
    by the interpreter: pid * 4096 passes 2**31 at program 524288 and k0 + 4096 one program earlier. In int32 those
    chunks read no logits (their partial sums were 0) or negative offsets; each must hold 4096 noisy-half terms."""
    from fastgan.kernels import nt_losses as kn

    n, selected = 2 ** 31 + 2 * 4096, [524286, 524287, 524288, 524289]
    partials, term = _forward_partials(monkeypatch, n, selected)
    assert kn._wide(0, n)
    torch.testing.assert_close(partials[selected], torch.full((4,), 4096 * term), rtol=1e-5, atol=0)
    assert torch.isnan(partials[:selected[0]]).all()  # the others did not run


def test_triton_forward_a_side_just_short_of_2_31_logits(monkeypatch):
    """A side of 2**31 - 1 logits (below 2**31, so a WIDE threshold at 2**31 would leave it narrow; a mutant that
    survived): the last chunk starts at k0 = 2**31 - 4096, where k0 + CHUNK = 2**31 wraps in int32, so its end
    min(k0 + CHUNK, n) went negative and the chunk summed nothing. Each of the last chunks must hold its terms."""
    n, chunk = 2 ** 31 - 1, 4096
    programs = -(-n // chunk)
    selected = [programs - 2, programs - 1]
    partials, term = _forward_partials(monkeypatch, n, selected)
    want = torch.tensor([chunk * term, (n - (programs - 1) * chunk) * term], dtype=torch.float32)
    torch.testing.assert_close(partials[selected], want, rtol=1e-5, atol=0)


def test_triton_backward_past_2_31_logits_indexes_in_int64(monkeypatch):
    """The backward's k = pid * BLOCK + arange passes 2**31 at program 2**21 (BLOCK 1024): in int32 it wrapped to
    negative offsets (a mutant that survived). A stride-0 side of 2**31 + 2048 logits (d_fake allocated but only the
    two programs around the wrap run, so only their pages are touched): both programs' gradients are G's loss
    slope, the same value."""
    from fastgan.kernels import nt_losses as kn

    block = kn.BACKWARD_BLOCK
    n = 2 ** 31 + 2 * block
    wrap = 2 ** 31 // block
    ran = _run_only_programs(monkeypatch, -(-n // block), [wrap - 1, wrap])
    psi = 0.3
    try:
        d_fake = torch.empty(n)  # 8 GiB of address space, of which the two programs touch 8 KiB
    except RuntimeError as e:  # overcommit_memory=2 or a ulimit -v
        pytest.skip(f"cannot reserve 8 GiB of address space here: {e}")
    kn.backward(torch.ones(()), None, None, torch.empty(0), torch.full((1,), psi).expand(n), None, 0.0, True, True,
                torch.empty(0), d_fake)
    assert ran, "the interpreter's grid loop was not the one patched"
    # d/dpsi of G's mean loss log1p(exp(-psi)) / n_noisy, n_noisy = n - n // 2 (as the forward tests' terms)
    want = -1.0 / (1.0 + math.exp(psi)) / (n - n // 2)
    got = d_fake[(wrap - 1) * block:(wrap + 1) * block]
    torch.testing.assert_close(got, torch.full_like(got, want), rtol=1e-5, atol=0)
