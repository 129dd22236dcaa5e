"""Bad arguments to fastgan.metrics: a ValueError/TypeError naming the argument, never an internal error or a
silently wrong score; numpy input is accepted like tensors."""
import math

import numpy as np
import pytest
import torch

from fastgan.data import mixtures
from fastgan.metrics import mode_metrics, parzen_log_likelihood, parzen_score, select_sigma

NAN, INF = float("nan"), float("inf")


def _data(n=20, d=2, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_values_are_refused_naming_the_argument(bad):
    s, v, t = _data(seed=0), _data(seed=1), _data(seed=2)
    for name in ("samples", "validation", "test"):
        args = {"samples": s.clone(), "validation": v.clone(), "test": t.clone()}
        args[name][3, 1] = bad
        with pytest.raises(ValueError, match=f"^{name}: contains 1 non-finite"):
            parzen_score(args["samples"], args["validation"], args["test"], [0.1, 1.0])
        if name != "test":
            # it used to return the grid's first sigma with NaN scores
            with pytest.raises(ValueError, match=f"^{name}: contains 1 non-finite"):
                select_sigma(args["samples"], args["validation"], [0.1, 1.0])
    x = v.clone()
    x[0, 0] = bad
    with pytest.raises(ValueError, match="^x: contains 1 non-finite"):
        parzen_log_likelihood(s, x, 0.5)
    with pytest.raises(ValueError, match="^samples: contains 1 non-finite"):
        parzen_log_likelihood(x, s, 0.5)
    means = mixtures.means("ring8").clone()
    means[2, 0] = bad
    with pytest.raises(ValueError, match="^means: contains 1 non-finite"):
        mode_metrics(_data(), means, 0.02)


@pytest.mark.parametrize("batch_size, exc", [(0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError),
                                             ("4", TypeError)])
def test_parzen_batch_size_must_be_a_positive_int(batch_size, exc):
    with pytest.raises(exc, match="^batch_size: "):
        parzen_log_likelihood(_data(), _data(5), 0.5, batch_size=batch_size)


@pytest.mark.parametrize("sigma, exc", [(INF, ValueError), (NAN, ValueError), (-1.0, ValueError), (0, ValueError),
                                        ("0.5", TypeError), (None, TypeError), (True, TypeError)])
def test_parzen_sigma_must_be_finite_and_positive(sigma, exc):
    with pytest.raises(exc, match="^sigma: "):
        parzen_log_likelihood(_data(), _data(5), sigma)


def test_parzen_accepts_numpy_and_numpy_scalars():
    s, x = _data(), _data(5, seed=1)
    want = parzen_log_likelihood(s, x, 0.5)
    got = parzen_log_likelihood(s.numpy(), x.numpy(), np.float32(0.5), batch_size=np.int64(2))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    assert select_sigma(s.numpy(), x.numpy(), [0.5])[1] == pytest.approx({0.5: float(want.mean())})
    with pytest.raises(TypeError, match="^samples: expected a tensor or numpy array, got list"):
        parzen_log_likelihood(s.tolist(), x, 0.5)
    with pytest.raises(TypeError, match="^x: a numpy array of dtype object, which torch cannot read"):
        parzen_log_likelihood(s, np.array([[object()]]), 0.5)


def test_numpy_arrays_torch_cannot_view_are_read():
    """Reversed (negative strides), byte-swapped and read-only arrays: torch.as_tensor refuses the first two with
    its own error naming no argument, and warns on every read-only one (np.load(mmap_mode="r"))."""
    import warnings

    from fastgan.metrics import frechet_distance, mode_metrics

    s, x = _data(), _data(5, seed=1)
    want = parzen_log_likelihood(s, x, 0.5)
    readonly = s.numpy().copy()
    readonly.flags.writeable = False
    for arr in (s.numpy()[::-1].copy()[::-1], s.numpy().astype(">f8"), readonly):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            torch.testing.assert_close(parzen_log_likelihood(arr, x, 0.5), want, rtol=1e-12, atol=0)
    flipped = s.numpy()[::-1]
    torch.testing.assert_close(frechet_distance(flipped, x.numpy()), frechet_distance(s.flip(0), x))
    assert mode_metrics(flipped, np.zeros((2, s.shape[1]))[::-1], 0.1)["modes"] >= 0
    with pytest.raises(TypeError, match="^samples: a numpy array of dtype float128, which torch cannot read"):
        parzen_log_likelihood(s.numpy().astype(np.longdouble), x, 0.5)


@pytest.mark.parametrize("sigma", [1e-170, 1e170])
def test_parzen_sigma_whose_square_is_not_a_normal_float_is_named(sigma):
    with pytest.raises(ValueError, match=r"^sigma: .* squared (underflows|overflows) float64"):
        parzen_log_likelihood(_data(), _data(5), sigma)
    with pytest.raises(ValueError, match=r"^sigmas\[1\]: "):
        select_sigma(_data(), _data(5), [0.5, sigma])


def test_a_zero_dimensional_numpy_sigma_is_a_one_value_grid():
    assert list(select_sigma(_data(), _data(5), np.array(0.25))[1]) == [0.25]


def test_select_sigma_takes_a_single_number_as_a_one_value_grid():
    s, v = _data(), _data(5, seed=1)
    best, scores = select_sigma(s, v, 0.5)
    assert best == 0.5 and list(scores) == [0.5]
    assert parzen_score(s, v, v, np.float64(0.5))["sigma"] == 0.5
    with pytest.raises(ValueError, match=r"^sigmas\[1\]: must be finite and > 0"):
        select_sigma(s, v, [0.5, 0.0])
    with pytest.raises(ValueError, match=r"^sigmas\[0\]: must be finite and > 0"):
        select_sigma(s, v, [INF])
    with pytest.raises(ValueError, match="^sigmas: must be finite and > 0"):
        select_sigma(s, v, -0.5)
    with pytest.raises(TypeError, match="^sigmas: expected a number or an iterable"):
        select_sigma(s, v, "0.5")
    with pytest.raises(ValueError, match="^sigmas: need at least one value"):
        select_sigma(s, v, [])


def test_parzen_is_exact_far_from_the_origin():
    # ||x||^2 + ||s||^2 - 2 x.s at 1e6 with sigma 1e-4 cancelled to ~1.5 nats off before the sets were centred
    g = torch.Generator().manual_seed(0)
    sigma = 1e-4
    s = 1e6 + torch.randn(50, 3, generator=g, dtype=torch.float64) * sigma
    x = 1e6 + torch.randn(20, 3, generator=g, dtype=torch.float64) * sigma
    d2 = (x[:, None, :] - s[None, :, :]).pow(2).sum(-1)
    want = torch.logsumexp(-d2 / (2 * sigma ** 2), 1) - math.log(50) - 1.5 * math.log(2 * math.pi * sigma ** 2)
    torch.testing.assert_close(parzen_log_likelihood(s, x, sigma, batch_size=7), want, rtol=0, atol=1e-6)


def test_mode_metrics_means_shape_errors():
    x = _data()
    with pytest.raises(ValueError, match=r"^means: expected \(K, D\) mode centres .* got shape \(0, 2\)"):
        mode_metrics(x, torch.zeros(0, 2), 0.1)
    with pytest.raises(ValueError, match=r"^means: expected \(K, D\) .* got shape \(2,\)"):
        mode_metrics(x, torch.zeros(2), 0.1)
    with pytest.raises(ValueError, match=r"^samples: expected \(N, 3\) points, got \(20, 2\)"):
        mode_metrics(x, torch.zeros(4, 3), 0.1)


def test_mode_metrics_accepts_numpy():
    means = mixtures.means("ring8")
    x = means[3].repeat(10, 1) + 0.001
    want = mode_metrics(x, means, 0.02)
    assert mode_metrics(x.numpy(), means.numpy(), 0.02) == want
    assert mode_metrics(x.numpy(), means, np.float64(0.02), min_count=np.int64(1)) == want
    with pytest.raises(TypeError, match="^means: expected a tensor or numpy array, got list"):
        mode_metrics(x, means.tolist(), 0.02)


@pytest.mark.parametrize("min_count, exc", [(0, ValueError), (-1, ValueError), (1.0, TypeError),
                                            (True, TypeError)])
def test_mode_metrics_min_count_must_be_a_positive_int(min_count, exc):
    means = mixtures.means("ring8")
    # min_count 0 or -1 used to count the 7 uncovered modes as covered
    with pytest.raises(exc, match="^min_count: "):
        mode_metrics(means[3].repeat(10, 1), means, 0.02, min_count=min_count)


@pytest.mark.parametrize("name, value", [("std", INF), ("std", NAN), ("std", 0.0), ("threshold", -1.0),
                                         ("threshold", NAN), ("threshold", INF)])
def test_mode_metrics_std_and_threshold_must_be_finite_and_positive(name, value):
    means = mixtures.means("ring8")
    kw = {"std": 0.02, "threshold": 3.0, name: value}
    with pytest.raises(ValueError, match=f"^{name}: must be finite and > 0"):
        mode_metrics(means, means, **kw)


def test_mode_metrics_without_samples():
    m = mode_metrics(torch.zeros(0, 2), mixtures.means("ring8"), 0.02)
    assert m["modes"] == 0 and m["high_quality"] == 0.0 and math.isnan(m["kl_modes"]) and m["counts"] == [0] * 8


@pytest.mark.parametrize("to_bool", [lambda t: t > 0, lambda t: (t > 0).numpy()], ids=["tensor", "numpy"])
def test_bool_points_are_refused_naming_the_argument(to_bool):
    # True/False used to be scored as 1/0 coordinates without a word
    s, v, t = _data(seed=0), _data(seed=1), _data(seed=2)
    for name in ("samples", "validation", "test"):
        args = {"samples": s, "validation": v, "test": t}
        args[name] = to_bool(args[name])
        with pytest.raises(TypeError, match=f"^{name}: expected numbers, got dtype torch.bool"):
            parzen_score(args["samples"], args["validation"], args["test"], [0.1, 1.0])
    with pytest.raises(TypeError, match="^x: expected numbers, got dtype torch.bool"):
        parzen_log_likelihood(s, to_bool(v), 0.5)
    with pytest.raises(TypeError, match="^validation: expected numbers"):
        select_sigma(s, to_bool(v))
    means = mixtures.means("ring8")
    with pytest.raises(TypeError, match="^samples: expected numbers, got dtype torch.bool"):
        mode_metrics(to_bool(_data()), means, 0.02)
    with pytest.raises(TypeError, match="^means: expected numbers, got dtype torch.bool"):
        mode_metrics(_data(), to_bool(means), 0.02)


def test_an_int_beyond_float64_is_refused_naming_the_argument():
    # 10**400 raised a bare OverflowError ("int too large to convert to float") naming nothing
    from torch import nn

    from fastgan.metrics import real_fraction

    x, means, big = _data(), mixtures.means("ring8"), 10 ** 400
    with pytest.raises(ValueError, match="^sigma: must be finite"):
        parzen_log_likelihood(x, x, big)
    with pytest.raises(ValueError, match=r"^sigmas: must be finite"):
        select_sigma(x, x, big)
    with pytest.raises(ValueError, match="^std: must be finite"):
        mode_metrics(means, means, big)
    with pytest.raises(ValueError, match="^threshold: must be finite"):
        mode_metrics(means, means, 0.02, big)
    with pytest.raises(ValueError, match="^threshold: expected a finite number"):
        real_fraction(nn.Linear(2, 1), x, threshold=big)
    # a min_count no mode can reach covers none (torch's comparison overflowed)
    assert mode_metrics(means, means, 0.02, min_count=big)["modes"] == 0
