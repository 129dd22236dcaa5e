"""Reference NTGAN noisy/clean batches (Noise-Tempered GAN, Algorithm 1 and Sec. 2.3) and the Philox stream
they draw from, written in plain torch ops: the oracle of fastgan/ops/noise.py.

Stream (same as csrc/include/fastgan/philox.h and Triton's tl.randn4x): number e of a draw at offset `off` is
word e % 4 of Philox4x32-10 with key (lo32(seed), hi32(seed)) and counter (lo32(off + e // 4),
hi32(off + e // 4), 0, 0), mapped to a 31-bit uniform and through Box-Muller on word pairs (0, 1), (2, 3).
A draw of n numbers advances the offset by ceil(n / 4).
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
MUL_A, MUL_B = 0xD2511F53, 0xCD9E8D57
BUMP_A, BUMP_B = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
UNIFORM_SCALE = 4.6566127342e-10
TWO_PI = 6.283185307179586
U_MIN = 1.0e-7


def _mulhilo(a: int, b: torch.Tensor):
    """(hi, lo) 32-bit words of a * b for a constant a < 2^32 and int64 b in [0, 2^32), without int64 overflow."""
    p_lo = a * (b & 0xFFFF)  # < 2^48
    p_hi = a * (b >> 16)     # < 2^48; a * b = p_hi * 2^16 + p_lo
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & MASK32
    return hi, lo


def philox4x32(c0, c1, c2, c3, k0: int, k1: int, rounds: int = ROUNDS):
    """Philox4x32 on int64 tensors holding 32-bit words; returns the four output words."""
    for _ in range(rounds):
        hi_a, lo_a = _mulhilo(MUL_A, c0)
        hi_b, lo_b = _mulhilo(MUL_B, c2)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + BUMP_A) & MASK32
        k1 = (k1 + BUMP_B) & MASK32
    return c0, c1, c2, c3


def philox_words(seed: int, offset: int, n_counters: int, device="cpu") -> torch.Tensor:
    """(n_counters, 4) int64 words of counters offset, offset + 1, ..."""
    ctr = offset + torch.arange(n_counters, dtype=torch.int64, device=device)
    zero = torch.zeros_like(ctr)
    seed &= (1 << 64) - 1
    words = philox4x32(ctr & MASK32, (ctr >> 32) & MASK32, zero, zero, seed & MASK32, (seed >> 32) & MASK32)
    return torch.stack(words, dim=1)


def uniform_from_words(words: torch.Tensor) -> torch.Tensor:
    signed = torch.where(words >= 2**31, words - 2**32, words)
    folded = torch.where(signed < 0, -signed - 1, signed)
    return folded.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32, device=words.device)


def box_muller(u1: torch.Tensor, u2: torch.Tensor):
    u1 = torch.clamp_min(u1, U_MIN)
    th = u2 * torch.tensor(TWO_PI, dtype=torch.float32, device=u2.device)
    r = torch.sqrt(-2.0 * torch.log(u1))
    return r * torch.cos(th), r * torch.sin(th)


def philox_normal(seed: int, offset: int, n: int, device="cpu") -> torch.Tensor:
    """The first n float32 standard normals of the stream at (seed, offset)."""
    u = uniform_from_words(philox_words(seed, offset, (n + 3) // 4, device))
    n0, n1 = box_muller(u[:, 0], u[:, 1])
    n2, n3 = box_muller(u[:, 2], u[:, 3])
    return torch.stack([n0, n1, n2, n3], dim=1).reshape(-1)[:n]


def counters_for(n: int) -> int:
    return (n + 3) // 4


def split(batch: int, mode: str):
    """(n_clean, n_noisy) rows of a batch of `batch` samples: 'double' keeps all clean and adds all noisy;
    'half' keeps the first batch // 2 clean and makes the rest noisy."""
    if mode == "double":
        return batch, batch
    return batch // 2, batch - batch // 2


def gaussian_noise(sigma, sample_shape, n_noisy: int, state: torch.Tensor, advance: bool = True,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """eps = sigma * z, z from the stream at (state[0], state[1]); sigma a float or a tensor broadcastable to
    the sample shape. A float sigma multiplies in float64 for dtype (x's) float64, as add_noise adds (a float32
    product rounds eps, and overflows for sigma near the float64 range). Advances state[1] in place (on its device)
    when `advance`."""
    F = 1
    for s in sample_shape:
        F *= s
    seed, offset = int(state[0]), int(state[1])
    z = philox_normal(seed, offset, n_noisy * F, state.device).reshape(n_noisy, *sample_shape)
    if advance:
        state[1] += counters_for(n_noisy * F)
    if isinstance(sigma, torch.Tensor):
        acc = torch.float64 if sigma.dtype == torch.float64 else torch.float32
        return sigma.to(acc) * z.to(acc)
    return sigma * (z.double() if dtype == torch.float64 else z)


def add_noise(x_real, x_fake, eps, mode: str = "double"):
    """(real_batch, fake_batch) with the same eps added to real and fake.

    double: [x_1..x_m, x_1 + eps_1, .., x_m + eps_m] (eps: (m, ...));
    half:   [x_1..x_h, x_{h+1} + eps_1, .., x_m + eps_{m-h}] with h = m // 2 (eps: (m - h, ...)).
    The noisy part is computed in float32 (float64 for float64 x) and rounded once to x's dtype.
    Either x may be None (its batch is then None).
    """
    def build(x):
        if x is None:
            return None
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        n_clean, n_noisy = split(x.shape[0], mode)
        src = x if mode == "double" else x[n_clean:]
        noisy = (src.to(acc) + eps.to(acc)).to(x.dtype)
        return torch.cat([x[:n_clean], noisy], dim=0)

    return build(x_real), build(x_fake)


def noisy_clean_batch(x_real, x_fake, noise, mode: str = "double", state: torch.Tensor | None = None):
    """Reference of fastgan.ops.noisy_clean_batch.

    noise: a float sigma or a sigma tensor broadcastable to the sample shape (eps = sigma * z, z drawn from
    `state` = int64 [seed, offset, ...], whose offset advances), or the noise generator's output eps
    (a tensor with a batch dimension: (n_noisy, *sample_shape), cast to x's dtype).
    """
    x0 = x_real if x_real is not None else x_fake
    n_clean, n_noisy = split(x0.shape[0], mode)
    if isinstance(noise, torch.Tensor) and noise.dim() == x0.dim():
        eps = noise.to(x0.dtype)
    else:
        eps = gaussian_noise(noise, tuple(x0.shape[1:]), n_noisy, state, dtype=x0.dtype)
    return add_noise(x_real, x_fake, eps, mode)
