"""Built-in Gaussian mixtures: Roth et al.'s 2-D submanifold mixture in 3-D, the ring of 8 and the grid of 25.

Where the numbers come from:
- ``roth3d``: Roth, Lucchi, Nowozin, Hofmann (2017), appendix 7.3, and the authors' code
  (github.com/rothk/Stabilizing_GANs, 3DGAN/3DGAN.py): seven components with std 0.01 and means
  ``(sin θ_k, cos θ_k)``, ``θ_k = 2πk/7``, embedded as ``(x, y) -> (x, y, 0)``, rotated by π/4 about the
  axis (1, −1, 0)/√2 and translated by (1, 1, 1)/√3. The authors' code applies the Rodrigues matrix R to row
  vectors (``x @ R + t``); we do exactly that, so samples match theirs. The noise is drawn in the plane,
  before the embedding: the mixture has no thickness off its 2-D plane (the "dimensional misspecification"
  the paper studies).
- ``ring8``: Metz, Poole, Pfau, Sohl-Dickstein, "Unrolled GANs" (2017), appendix A: eight components with
  std 0.02 on a circle of radius 2 (the convention since used by VEEGAN and PacGAN).
- ``grid25``: Srivastava et al., "VEEGAN" (2017), section 5 (also PacGAN): 25 components with std 0.05 at
  {−4, −2, 0, 2, 4}².
"""
from __future__ import annotations

import math

import torch

MIXTURES = ("roth3d", "ring8", "grid25")

# name -> (number of components, ambient dimension, default std)
_SPECS = {"roth3d": (7, 3, 0.01), "ring8": (8, 2, 0.02), "grid25": (25, 2, 0.05)}

_ROTH_AXIS = (1.0 / math.sqrt(2.0), -1.0 / math.sqrt(2.0), 0.0)
_ROTH_ANGLE = math.pi / 4
_ROTH_SHIFT = 1.0 / math.sqrt(3.0)


def _check_name(name: str) -> tuple[int, int, float]:
    if not isinstance(name, str) or name not in _SPECS:  # a list or array name raised "unhashable type"
        raise ValueError(f"mixture name: must be one of {MIXTURES}, got {name!r}")
    return _SPECS[name]


def default_std(name: str) -> float:
    """The per-coordinate standard deviation the literature uses for this mixture."""
    return _check_name(name)[2]


def quality_std(name: str, std) -> float:
    """The std the mode metrics measure distances in: the data's own, or the literature's default when the data
    uses none (None) or is point masses (0: a zero tolerance would count almost no sample as high quality)."""
    return std if std else default_std(name)


def dim(name: str) -> int:
    """Ambient dimension of the mixture's samples (3 for roth3d, 2 for the planar ones)."""
    return _check_name(name)[1]


def num_components(name: str) -> int:
    return _check_name(name)[0]


def rodrigues(axis, angle: float, dtype=torch.float64) -> torch.Tensor:
    """Rotation matrix I + sin(a) K + (1 − cos(a)) K² for a unit axis (K: the axis' cross-product matrix)."""
    a = torch.as_tensor(axis, dtype=dtype)
    if a.shape != (3,):
        raise ValueError(f"axis: must have 3 components, got shape {tuple(a.shape)}")
    x, y, z = (a / a.norm()).tolist()
    K = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=dtype)
    return torch.eye(3, dtype=dtype) + math.sin(angle) * K + (1.0 - math.cos(angle)) * (K @ K)


def roth_embedding(dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, t) with E (2, 3) and t (3,) such that a planar point p maps to ``p @ E + t`` (authors' convention:
    embed (x, y, 0), multiply the row vector by the Rodrigues matrix, add (1, 1, 1)/√3)."""
    R = rodrigues(_ROTH_AXIS, _ROTH_ANGLE, dtype)
    return R[:2].clone(), torch.full((3,), _ROTH_SHIFT, dtype=dtype)


def roth_plane(dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(origin, unit normal) of the plane that holds roth3d (origin = the circle's centre)."""
    E, t = roth_embedding(dtype)
    n = torch.linalg.cross(E[0], E[1])
    return t, n / n.norm()


def _planar_means(name: str, dtype) -> torch.Tensor:
    k, _, _ = _SPECS[name]
    if name == "grid25":
        g = torch.arange(-4.0, 5.0, 2.0, dtype=dtype)
        return torch.cartesian_prod(g, g)
    radius = 1.0 if name == "roth3d" else 2.0
    theta = torch.arange(k, dtype=dtype) * (2 * math.pi / k)
    # roth3d follows its authors' (sin, cos) order; ring8 uses the same order (a rotation of the ring).
    return radius * torch.stack([torch.sin(theta), torch.cos(theta)], dim=1)


def means(name: str, device=None, dtype=torch.float32) -> torch.Tensor:
    """The mixture's component means, shape (K, D)."""
    _check_name(name)
    m = _planar_means(name, torch.float64)
    if name == "roth3d":
        E, t = roth_embedding(torch.float64)
        m = m @ E + t
    return m.to(device=device, dtype=dtype)


def _randint(high: int, n: int, generator, device) -> torch.Tensor:
    # A generator lives on one device; draw there and move, rather than fail, when it differs.
    gdev = generator.device if generator is not None else device
    idx = torch.randint(high, (n,), generator=generator, device=gdev)
    return idx if idx.device == device else idx.to(device)


def _randn(shape, generator, device, dtype) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    x = torch.randn(shape, generator=generator, device=gdev, dtype=dtype)
    return x if x.device == device else x.to(device)


def _check_std(std, dtype) -> float:
    """std as a float: a real number (not bool), finite, >= 0 and representable in dtype. An inf std drew all-inf
    samples without a word, True drew with std 1, and 1e300 in float32 raised torch's bare RuntimeError."""
    from ..metrics._args import real_number  # here: the metrics package loads only where a std is given

    v = real_number(std)
    if v is None:
        raise TypeError(f"std: expected a number (the components' standard deviation), got {type(std).__name__}")
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"std: must be finite and >= 0, got {std!r}")
    if v > torch.finfo(dtype).max:
        raise ValueError(f"std: {std!r} exceeds the largest {dtype} ({torch.finfo(dtype).max:g})")
    return v


class Sampler:
    """A mixture's constants held on one device, so that drawing a batch copies nothing from the host (and
    can be captured in a CUDA graph)."""

    def __init__(self, name: str, device=None, std: float | None = None, dtype=torch.float32):
        k, _, std0 = _check_name(name)
        self.name, self.k = name, k
        self.std = std0 if std is None else _check_std(std, dtype)
        self.device, self.dtype = torch.device(device or "cpu"), dtype
        self.planar = _planar_means(name, torch.float64).to(device=self.device, dtype=dtype)
        self.embed = None
        if name == "roth3d":
            E, t = roth_embedding(torch.float64)
            self.embed = (E.to(device=self.device, dtype=dtype), t.to(device=self.device, dtype=dtype))

    def __call__(self, n: int, generator: torch.Generator | None = None, return_components: bool = False):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n: must be a non-negative int, got {n!r}")
        comp = _randint(self.k, n, generator, self.device)
        x = self.planar.index_select(0, comp)
        if self.std:
            x = torch.add(x, _randn((n, 2), generator, self.device, self.dtype), alpha=self.std)
        if self.embed is not None:
            # elementwise, not a matmul: TF32 matmuls would add ~1e-3 of error off the plane, a tenth of std
            E, t = self.embed
            x = torch.addcmul(torch.addcmul(t, x[:, :1], E[0]), x[:, 1:], E[1])
        return (x, comp) if return_components else x


def sample(name: str, n: int, generator: torch.Generator | None = None, device=None,
           std: float | None = None, dtype=torch.float32, return_components: bool = False):
    """Draw n samples (n, D) on `device` with an optional torch.Generator (drawn on the generator's device).

    With ``return_components=True`` also returns the component index of every sample (n,).
    """
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    return Sampler(name, device, std, dtype)(n, generator, return_components)


def nearest_mode(x: torch.Tensor, mixture_means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the nearest mean, Euclidean distance to it) for every row of x; for mode-coverage metrics."""
    if x.dim() != 2 or mixture_means.dim() != 2 or x.shape[1] != mixture_means.shape[1]:
        raise ValueError(f"x: expected (N, {mixture_means.shape[-1]}) points, got {tuple(x.shape)}")
    # the matmul form of cdist loses ~1e-4 to cancellation in float32: too coarse next to std 0.01
    d = torch.cdist(x.to(mixture_means.dtype), mixture_means, compute_mode="donot_use_mm_for_euclid_dist")
    dist, idx = d.min(dim=1)
    return idx, dist
