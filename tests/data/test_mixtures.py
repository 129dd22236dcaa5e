import math

import numpy as np
import pytest
import torch

from fastgan.data import DataConfig, build_dataset, mixtures


def test_roth_means_on_unit_circle_equally_spaced():
    m = mixtures.means("roth3d", dtype=torch.float64)
    centre, normal = mixtures.roth_plane()
    assert m.shape == (7, 3)
    # unit distance from the translated centre (1, 1, 1)/sqrt(3)
    assert torch.allclose(centre, torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64))
    assert torch.allclose((m - centre).norm(dim=1), torch.ones(7, dtype=torch.float64), atol=1e-12)
    # in the plane
    assert torch.allclose((m - centre) @ normal, torch.zeros(7, dtype=torch.float64), atol=1e-12)
    # equally spaced: neighbours are a chord of 2*pi/7 apart
    chord = 2 * math.sin(math.pi / 7)
    d = (m - m.roll(1, dims=0)).norm(dim=1)
    assert torch.allclose(d, torch.full((7,), chord, dtype=torch.float64), atol=1e-12)


def test_roth_rotation_matches_hand_derivation():
    # Authors' convention x @ R, i.e. e -> rotation of e by -pi/4 about u = (1, -1, 0)/sqrt(2) (Rodrigues):
    # e_z -> (1/2, 1/2, 1/sqrt 2): the plane's normal; first planar mean (sin 0, cos 0) = e_y ->
    # (-(1 - 1/sqrt 2)/2, (1 + 1/sqrt 2)/2, -1/2), then + (1, 1, 1)/sqrt 3.
    _, normal = mixtures.roth_plane()
    r2 = 1 / math.sqrt(2)
    assert torch.allclose(normal.abs(), torch.tensor([0.5, 0.5, r2], dtype=torch.float64), atol=1e-12)
    t = 1 / math.sqrt(3)
    want = torch.tensor([-(1 - r2) / 2 + t, (1 + r2) / 2 + t, -0.5 + t], dtype=torch.float64)
    assert torch.allclose(mixtures.means("roth3d", dtype=torch.float64)[0], want, atol=1e-12)
    R = mixtures.rodrigues((1.0, -1.0, 0.0), math.pi / 4)
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert abs(torch.trace(R).item() - (1 + 2 * math.cos(math.pi / 4))) < 1e-12


def test_roth_samples_lie_on_plane_with_std():
    g = torch.Generator().manual_seed(0)
    x, comp = mixtures.sample("roth3d", 20000, generator=g, return_components=True)
    assert x.shape == (20000, 3) and x.dtype == torch.float32
    centre, normal = (t.float() for t in mixtures.roth_plane())
    off_plane = ((x - centre) @ normal).abs().max().item()
    assert off_plane < 1e-5 < 0.01  # degenerate in 3-D: no thickness off the plane
    resid = x - mixtures.means("roth3d")[comp]
    E, _ = mixtures.roth_embedding(torch.float32)
    in_plane = resid @ E.T  # coordinates in the plane's orthonormal basis
    std = in_plane.std(dim=0)
    assert torch.allclose(std, torch.full((2,), 0.01), rtol=0.04), std
    freq = torch.bincount(comp, minlength=7).float() / 20000
    assert (freq - 1 / 7).abs().max() < 0.02
    idx, dist = mixtures.nearest_mode(x, mixtures.means("roth3d"))
    assert torch.equal(idx, comp) and dist.max() < 0.06


@pytest.mark.parametrize("name,k,std", [("ring8", 8, 0.02), ("grid25", 25, 0.05)])
def test_planar_mixture_samples_std(name, k, std):
    g = torch.Generator().manual_seed(1)
    x, comp = mixtures.sample(name, 20000, generator=g, return_components=True)
    assert x.shape == (20000, 2) and mixtures.default_std(name) == std
    resid = x - mixtures.means(name)[comp]
    assert torch.allclose(resid.std(dim=0), torch.full((2,), std), rtol=0.04)
    assert comp.unique().numel() == k


def test_ring_and_grid_means():
    ring = mixtures.means("ring8", dtype=torch.float64)
    assert ring.shape == (8, 2)
    assert torch.allclose(ring.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    chord = 2 * 2 * math.sin(math.pi / 8)
    assert torch.allclose((ring - ring.roll(1, 0)).norm(dim=1), torch.full((8,), chord, dtype=torch.float64))
    grid = mixtures.means("grid25")
    want = {(float(a), float(b)) for a in (-4, -2, 0, 2, 4) for b in (-4, -2, 0, 2, 4)}
    assert {tuple(r) for r in grid.tolist()} == want


def test_sampling_reproducible_with_generator():
    a = mixtures.sample("grid25", 64, generator=torch.Generator().manual_seed(5))
    b = mixtures.sample("grid25", 64, generator=torch.Generator().manual_seed(5))
    c = mixtures.sample("grid25", 64, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mixture_dataset_interface():
    ds = build_dataset(DataConfig(name="roth3d", nominal_size=1234, mixture_std=0.0))
    assert ds.kind == "points" and ds.shape == (3,) and len(ds) == 1234 and ds.device == torch.device("cpu")
    x = ds.sample(32, torch.Generator().manual_seed(0))
    assert x.shape == (32, 3)
    # std 0: every sample is exactly a mean
    _, dist = mixtures.nearest_mode(x, ds.means)
    assert dist.max() < 1e-5
    with pytest.raises(ValueError, match="batch_size"):
        ds.sample(0)


def test_quality_std_is_the_data_std_unless_none_or_point_masses():
    assert mixtures.quality_std("ring8", 0.3) == 0.3
    assert mixtures.quality_std("ring8", None) == mixtures.quality_std("ring8", 0.0) == 0.02
    with pytest.raises(ValueError, match="mixture name"):
        mixtures.quality_std("ring9", None)


def test_bad_mixture_name():
    with pytest.raises(ValueError, match="mixture name"):
        mixtures.means("ring9")


@pytest.mark.cuda
def test_mixture_samples_on_cuda_with_cuda_generator():
    ds = build_dataset(DataConfig(name="ring8"), device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = ds.sample(128, g)
    assert x.is_cuda and x.shape == (128, 2)
    # a CPU generator still works (drawn on its device, moved)
    y = ds.sample(16, torch.Generator().manual_seed(0))
    assert y.is_cuda


@pytest.mark.cuda
def test_roth_samples_stay_on_plane_under_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        ds = build_dataset(DataConfig(name="roth3d"), device="cuda")
        x = ds.sample(4096, torch.Generator(device="cuda").manual_seed(0)).double().cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    centre, normal = mixtures.roth_plane()
    assert ((x - centre) @ normal).abs().max() < 1e-5


@pytest.mark.parametrize("std, exc, match", [(math.inf, ValueError, "must be finite and >= 0"),
                                             (math.nan, ValueError, "must be finite and >= 0"),
                                             (-0.1, ValueError, "must be finite and >= 0"),
                                             pytest.param(10 ** 400, ValueError, "must be finite and >= 0",
                                                          id="int-1e400"),
                                             (1e300, ValueError, "exceeds the largest torch.float32"),
                                             (True, TypeError, "expected a number"),
                                             ("0.1", TypeError, "expected a number"),
                                             ([0.1, 0.2], TypeError, "expected a number")])
def test_sampler_std_is_checked_naming_it(std, exc, match):
    # std=inf drew all-inf samples and True drew with std 1 without a word; 1e300 raised torch's RuntimeError
    with pytest.raises(exc, match=f"^std: .*{match}"):
        mixtures.sample("ring8", 3, std=std)


def test_sampler_std_accepts_numpy_and_tensor_numbers():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    want = mixtures.sample("ring8", 5, g(), std=0.1)
    for std in (np.float32(0.1), torch.tensor(0.1, dtype=torch.float64), 0):
        x = mixtures.sample("ring8", 5, g(), std=std)
        assert x.shape == (5, 2) and (std == 0 or torch.allclose(x, want))


def test_an_unhashable_mixture_name_is_named():
    with pytest.raises(ValueError, match="mixture name"):
        mixtures.sample(["ring8"], 3)
