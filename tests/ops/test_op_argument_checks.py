"""torch.ops.fastgan.* called directly with arguments of another dtype, layout or device than their kernels read,
or with codes the kernels do not know. The ops checked shapes only (test_op_shape_checks.py): a float32 tensor
beside float64 ones was read past its end by the cpu kernels (heap corruption: the process aborted in a loop of
calls), a float64 bias read as float32 gave inf, an int32 noise state was read and written as int64, a meta tensor's
null pointer was read as zeros, an unknown backend name was a KeyError (an audit's cases, 2026-12-06)."""
import re

import pytest
import torch

import fastgan.ops  # noqa: F401  (registers the ops)
import fastgan.ops.denoiser  # noqa: F401

ops = torch.ops.fastgan
BACKENDS = ["reference", "cpu"]


def _r(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def _denoiser():
    """A width-5 denoiser with one hidden layer of 6, its loss's saved activations from the reference."""
    h, noise = _r(4, 5), _r(4, 5)
    net = dict(weights=[_r(6, 5), _r(5, 6)], biases=[_r(6), _r(5)], gammas=[_r(6)])
    stats = dict(betas=[_r(6)], running_means=[torch.zeros(6)], running_vars=[torch.ones(6)])
    _, saved, _ = ops.denoiser_loss(h, noise, 1.0, **net, **stats, training=True, momentum=0.1, eps=1e-5,
                                    backend="reference")
    return h, noise, net, stats, saved


def _calls():
    """op -> (its arguments as keywords, all valid): each op runs with them on every backend of BACKENDS."""
    g, lg = _r(6, 3), _r(6)
    lr, lf, mu = _r(8), _r(8), torch.tensor(0.3)
    hb, rstd = _r(4, 6, 3), torch.rand(6) + 0.5
    x, xf, state, used = _r(4, 3), _r(4, 3), torch.tensor([1, 0, 0]), torch.tensor([1, 0])
    y, vec = _r(4, 5), lambda: _r(5)
    h, noise, net, stats, saved = _denoiser()
    bn = dict(training=True, momentum=0.1, eps=1e-5)
    return {
        "grad_norm_penalty": dict(grad=g, logits=lg, weight=1),
        "grad_norm_penalty_backward": dict(go=_r(6), grad=g, logits=lg, weight=2),
        "grad_norm_penalty_terms": dict(grad=g, logits=lg, weight=1, weight2=2, split=3, div=6),
        "nt_losses": dict(logits_real=lr, logits_fake=lf, mu=mu, mu_value=0.0, kind=0, reduction=0, js=True),
        "nt_losses_backward": dict(go=torch.tensor(1.0), gw_real=_r(8), gw_fake=_r(8), logits_real=lr,
                                   logits_fake=lf, mu=mu, mu_value=0.0, kind=0, reduction=1),
        "bn_cf_stats": dict(h=hb, eps=1e-5),
        "bn_cf_centered": dict(xhat=hb, t=_r(4, 6, 3), rstd=rstd, gamma=_r(6)),
        "bn_cf_vjp": dict(rho=_r(4, 6, 3), lam=_r(4, 6, 3), xhat=hb, t=_r(4, 6, 3), rstd=rstd, gamma=_r(6),
                          mt=_r(6), q=_r(6)),
        "noisy_batch_draw": dict(x_real=x, x_fake=xf, sigma=torch.full((1,), 0.5), sigma_value=0.0, state=state,
                                 half=False),
        "noisy_batch": dict(x_real=x, x_fake=xf, sigma=None, sigma_value=0.0, eps=_r(4, 3), used=None, half=False),
        "noisy_batch_backward": dict(g_real=_r(8, 3), g_fake=_r(8, 3), used=used, m=4, C=1, want_dx_real=True,
                                     want_dx_fake=True, want_deps=False, want_dsigma=True, half=False),
        "bn_relu": dict(y=y, bias=vec(), gamma=vec(), beta=vec(), running_mean=torch.zeros(5),
                        running_var=torch.ones(5), relu=True, **bn),
        "bn_relu_backward": dict(dout=_r(4, 5), out=_r(4, 5).relu(), y=y, gamma=vec(), shift=vec(),
                                 invstd=torch.rand(5) + 0.5, training=True, relu=True),
        "recon_loss": dict(y=y, bias=vec(), target=_r(4, 5)),
        "recon_loss_backward": dict(go=_r(4), y=y, bias=vec(), target=_r(4, 5), want_dbias=True),
        "denoiser_forward": dict(h=h, **net, **stats, track=True, **bn),
        "denoiser_loss": dict(h=h, noise=noise, sigma=1.0, **net, **stats, **bn),
        "denoiser_loss_backward": dict(go=_r(4), h=h, sigma=1.0, **net, saved=saved, training=True, need_h=True,
                                       need_noise=True),
    }


CALLS = _calls()
_OTHER = {torch.float32: torch.float64, torch.float64: torch.float32, torch.int64: torch.int32}


def _tensor_args(kwargs):
    """(argument name as the error names it, keyword, list index or None) of each tensor argument."""
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            yield k, k, None
        elif isinstance(v, list):
            yield from ((f"{k}[{i}]", k, i) for i, t in enumerate(v) if isinstance(t, torch.Tensor))


def _replaced(kwargs, key, index, fn):
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
    if index is None:
        out[key] = fn(out[key])
    else:
        out[key][index] = fn(out[key][index])
    return out


def test_every_op_is_in_the_table():
    registered = {name for name in dir(ops) if not name.startswith("_") and name not in ("name",)
                  and hasattr(getattr(ops, name), "default")}
    assert registered == set(CALLS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(CALLS))
def test_the_tables_arguments_run(op, backend):
    getattr(ops, op)(**CALLS[op], backend=backend)


# (an op of one tensor argument takes it in either dtype: test_an_integer_tensor_is_named)
DTYPE_CASES = [(op, name) for op, kw in CALLS.items() for name, _, _ in _tensor_args(kw)
               if len(list(_tensor_args(kw))) > 1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op,name", DTYPE_CASES, ids=[f"{op}-{name}" for op, name in DTYPE_CASES])
def test_an_argument_of_another_dtype_is_named(op, name, backend):
    """Each tensor argument in turn in another dtype (float32 <-> float64, int64 -> int32): a TypeError naming it
    (or, for the argument the others follow, naming it as what they follow)."""
    (key, index), = [(k, i) for n, k, i in _tensor_args(CALLS[op]) if n == name]
    kwargs = _replaced(CALLS[op], key, index, lambda t: t.to(_OTHER[t.dtype]))
    with pytest.raises(TypeError, match=rf"^fastgan::{op}: ") as info:
        getattr(ops, op)(**kwargs, backend=backend)
    assert re.search(rf"(?<![\w\[]){re.escape(name)}(?![\w\[])", str(info.value)), str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(CALLS))
def test_an_integer_tensor_is_named(op, backend):
    name, key, index = next(_tensor_args(CALLS[op]))
    kwargs = _replaced(CALLS[op], key, index, lambda t: t.round().to(torch.int32))
    with pytest.raises(TypeError, match=rf"^fastgan::{op}: {re.escape(name)} must be .*got torch.int32"):
        getattr(ops, op)(**kwargs, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["grad_norm_penalty", "nt_losses", "noisy_batch", "bn_relu", "denoiser_forward",
                                "bn_cf_centered"])
def test_a_sparse_argument_is_named(op, backend):
    name, key, index = list(_tensor_args(CALLS[op]))[-1]
    kwargs = _replaced(CALLS[op], key, index, lambda t: t.to_sparse())
    if _TORCH_READS_STORAGES_FIRST:  # its own refusal, before any implementation runs
        with pytest.raises(NotImplementedError, match="Cannot access storage of SparseTensorImpl"):
            getattr(ops, op)(**kwargs, backend=backend)
        return
    with pytest.raises(TypeError, match=rf"^fastgan::{op}: {re.escape(name)} must be a strided \(dense\) tensor"):
        getattr(ops, op)(**kwargs, backend=backend)


# torch 2.4's custom_op wrapper reads every tensor argument's storage (to check outputs alias none) before calling
# the implementation; later ones (2.13 checked) call it first
_TORCH_READS_STORAGES_FIRST = tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["grad_norm_penalty_backward", "nt_losses_backward", "noisy_batch_draw",
                                "recon_loss", "denoiser_loss", "bn_cf_vjp"])
def test_an_argument_on_another_device_is_named(op, backend):
    """A meta tensor beside CPU ones: the cpu kernels read its null pointer (zeros came back)."""
    name, key, index = list(_tensor_args(CALLS[op]))[-1]
    kwargs = _replaced(CALLS[op], key, index, lambda t: t.to("meta"))
    with pytest.raises(ValueError, match=rf"^fastgan::{op}: {re.escape(name)} is on meta but \w+ is on cpu"):
        getattr(ops, op)(**kwargs, backend=backend)


@pytest.mark.parametrize("op", ["grad_norm_penalty", "noisy_batch_backward", "denoiser_forward"])
def test_an_unknown_backend_is_named(op):
    with pytest.raises(ValueError, match=rf"^fastgan::{op}: backend must be one of .*got 'gpu'"):
        getattr(ops, op)(**CALLS[op], backend="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cuda backend takes CPU tensors only where none is seen")
@pytest.mark.parametrize("op", ["grad_norm_penalty", "nt_losses", "bn_relu"])
def test_the_cuda_backend_refuses_cpu_tensors(op):
    """The cuda kernels would address host memory as device memory."""
    with pytest.raises(ValueError, match=rf"^fastgan::{op}: \w+ is on cpu: the cuda backend needs CUDA tensors"):
        getattr(ops, op)(**CALLS[op], backend="cuda")


CODES = [
    ("grad_norm_penalty", "weight", 7, r"weight must be in \(0, 1, 2, 3, 4, 5\), got 7"),
    ("grad_norm_penalty_backward", "weight", -1, r"weight must be in \(0, 1, 2, 3, 4, 5\), got -1"),
    ("grad_norm_penalty_terms", "weight2", 6, r"weight2 must be a weight code in \[0, 1, 2, 3, 4, 5\], got 6"),
    ("grad_norm_penalty_terms", "split", 99, r"split must be in \[0, 6\], got 99"),
    ("grad_norm_penalty_terms", "div", 0, "div must be a positive integer, got 0"),
    ("nt_losses", "kind", 5, r"kind must be in \(0, 1\), got 5"),
    ("nt_losses", "reduction", 2, r"reduction must be in \(0, 1\), got 2"),
    ("nt_losses_backward", "kind", -1, r"kind must be in \(0, 1\), got -1"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op,key,value,match", CODES, ids=[f"{c[0]}-{c[1]}" for c in CODES])
def test_a_code_the_kernels_do_not_know_is_named(op, key, value, match, backend):
    """weight 7 was a KeyError on the reference, split 99 and kind 5 were taken (the kernels' else branch), div 0
    was a ZeroDivisionError on cpu and inf on the reference."""
    with pytest.raises(ValueError, match=rf"^fastgan::{op}: {match}"):
        getattr(ops, op)(**{**CALLS[op], key: value}, backend=backend)


def test_nt_losses_mu_is_one_value():
    with pytest.raises(ValueError, match=r"^fastgan::nt_losses: mu must have shape \(\), got \(3,\)"):
        ops.nt_losses(**{**CALLS["nt_losses"], "mu": torch.ones(3)}, backend="cpu")
