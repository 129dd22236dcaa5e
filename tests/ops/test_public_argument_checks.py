"""Bad arguments to the public ops that raised an error naming no argument (an audit fuzzing every public op's
arguments on the reference, cpu and triton backends, 2026-12-07): a D that is not callable ("'NoneType' object is
not callable" from inside the penalty; penalty_mode answered for it), mode="mlp" on an x of another device than D's
layers (torch's "Tensor on device cpu is not on the expected device meta!" from the closed form's GEMMs, which the
dtype had been checked against already), Denoiser(device=...) (torch's RuntimeError, or an AssertionError "Torch not
compiled with CUDA enabled", where NoiseState(device=...) names the argument), and a numpy array of strings given as a
mode, reduction or backend (numpy's "truth value of an array ... is ambiguous", or, for one element, taken and
failing later as a dict key)."""
import numpy as np
import pytest
import torch
from torch import nn

import fastgan.ops as O


def _mlp():
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


@pytest.mark.parametrize("D", [None, 3, "D"], ids=["None", "int", "str"])
@pytest.mark.parametrize("call", [
    lambda D, x: O.gradient_penalty(D, x),
    lambda D, x: O.gradient_penalty(D, x, mode="jvp"),
    lambda D, x: O.gradient_penalty(D, x, mode="auto"),
    lambda D, x: O.r1_penalty(D, x),
    lambda D, x: O.js_penalty(D, x, x),
    lambda D, x: O.js_penalty(D, x, x, mode="auto"),
    lambda D, x: O.penalty_mode(D, x),
], ids=["gradient_penalty", "jvp", "auto", "r1", "js", "js_auto", "penalty_mode"])
def test_a_D_that_cannot_be_called_is_named(call, D):
    with pytest.raises(TypeError, match=rf"^D must be an nn.Module or a callable .*got {type(D).__name__}$"):
        call(D, torch.randn(4, 3))


def test_the_closed_form_names_a_layer_on_another_device_than_x():
    with pytest.raises(ValueError, match=r"^mode='mlp' cannot run this D: layer 0 \(Linear\) has weights on cpu but x "
                                         r"is on meta"):
        O.gradient_penalty(_mlp(), torch.randn(4, 3, device="meta"), mode="mlp")
    with pytest.raises(ValueError, match=r"layer 0 \(Linear\) has weights on cpu but x is on meta"):
        O.js_penalty(_mlp(), torch.randn(4, 3, device="meta"), torch.randn(4, 3, device="meta"), mode="mlp")


@pytest.mark.parametrize("device,match", [
    ("gpu", r"^device: 'gpu' is not a device torch can parse"),
    (-1, r"^device: -1 is not a device torch can parse"),
    pytest.param("cuda", r"^device: 'cuda' asked for, but torch sees no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is seen")),
], ids=["gpu", "negative", "cuda"])
def test_the_denoisers_device_is_named(device, match):
    with pytest.raises(ValueError, match=match):
        O.Denoiser(5, device=device)


def test_the_denoisers_device_still_takes_what_torch_takes():
    assert O.Denoiser(5, device=torch.device("cpu")).net[0].weight.device.type == "cpu"
    assert O.Denoiser(5, device="meta").net[0].weight.device.type == "meta"


ARRAYS = [np.array(["mean", "sum"]), np.array(["sum"])]


@pytest.mark.parametrize("value", ARRAYS, ids=["two", "one"])
@pytest.mark.parametrize("name,call", [
    ("reduction", lambda v: O.nt_losses(torch.zeros(4), torch.zeros(4), 0.5, reduction=v)),
    ("loss", lambda v: O.nt_losses(torch.zeros(4), torch.zeros(4), 0.5, loss=v)),
    ("reduction", lambda v: O.grad_norm_penalty(torch.ones(4, 3), torch.zeros(4), reduction=v)),
    ("mode", lambda v: O.gradient_penalty(_mlp(), torch.randn(4, 3), mode=v)),
    ("mode", lambda v: O.noisy_clean_batch(torch.ones(4, 3), None, 0.5, mode=v)),
    ("mode", lambda v: O.noisy_clean_batch(torch.ones(4, 3), torch.ones(4, 3), torch.ones(4, 3), mode=v)),
    ("reduction", lambda v: O.Denoiser(3, depth=1).loss(torch.randn(4, 3), reduction=v)),
    ("backend", lambda v: O.use_backend(v).__enter__()),
    # a call's backend= (np.array(["cpu"]) == "cpu" is truthy: the one-element array ran, or failed as a dict key)
    ("backend", lambda v: O.nt_losses(torch.zeros(4), torch.zeros(4), 0.5, backend=v)),
    ("backend", lambda v: O.noisy_clean_batch(torch.ones(4, 3), torch.ones(4, 3), 0.5, backend=v)),
    ("backend", lambda v: O.noisy_clean_batch(torch.ones(4, 3), torch.ones(4, 3), torch.ones(4, 3), backend=v)),
    ("backend", lambda v: O.grad_norm_penalty(torch.ones(4, 3), torch.zeros(4), backend=v)),
    ("backend", lambda v: O.js_penalty(_mlp(), torch.randn(4, 3), torch.randn(4, 3), backend=v)),
    ("backend", lambda v: O.Denoiser(3, depth=1, backend=v).loss(torch.randn(4, 3))),
], ids=["nt_reduction", "nt_loss", "penalty_reduction", "penalty_mode", "noise_mode", "noise_eps_mode",
        "denoiser_reduction", "use_backend", "nt_backend", "noise_backend", "noise_eps_backend", "penalty_backend",
        "js_backend", "denoiser_backend"])
def test_a_numpy_array_of_strings_is_named(name, call, value):
    with pytest.raises(ValueError, match=rf"(^|: ){name} must be one of .*got array\("):
        call(value)


@pytest.mark.parametrize("call", [
    lambda v: O.nt_losses(torch.zeros(4), torch.zeros(4), 0.5, backend=v),
    lambda v: O.noisy_clean_batch(torch.ones(4, 3), torch.ones(4, 3), 0.5, backend=v),
    lambda v: O.grad_norm_penalty(torch.ones(4, 3), torch.zeros(4), backend=v),
    lambda v: O.Denoiser(3, depth=1, backend=v),
], ids=["nt_losses", "noisy_clean_batch", "grad_norm_penalty", "Denoiser"])
def test_a_one_element_array_naming_a_backend_is_refused(call):
    """np.array(["cpu"]) == "cpu" is a truthy one-element array: noisy_clean_batch ran with it."""
    with pytest.raises(ValueError, match=r"backend must be one of .*got array\(\['cpu'\]"):
        call(np.array(["cpu"]))


def test_a_numpy_str_is_a_str():
    real, _ = O.noisy_clean_batch(torch.ones(4, 3), None, 0.5, mode=np.str_("half"))
    assert real.shape == (4, 3)
    O.nt_losses(torch.zeros(4), torch.zeros(4), 0.5, reduction=np.str_("sum"))
