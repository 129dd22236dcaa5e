"""Reference losses of every method, written the obvious way from the papers' formulas: the oracle that
fastgan.methods is tested against. Inputs are explicit (batches, noise, mu, ...) so a test can hand both
sides the same draws. Written with log(sigmoid), exp, double backward, separate forward passes: slow and
less stable than fastgan.methods, but easy to check against the papers. Never change this file to match an
implementation.
"""
from __future__ import annotations

import math

import torch

from . import denoiser as ref_denoiser
from . import penalty as ref_penalty


def _log_sigmoid(v):
    return torch.log(torch.sigmoid(v))


def _log_one_minus_sigmoid(v):
    return torch.log(1 - torch.sigmoid(v))


def _logits(D, x):
    return D(x).reshape(x.shape[0])


# ----------------------------------------------------------------- Goodfellow et al. 2014

def gan_value(logits_real, logits_fake):
    """V(D, G) = E_P[log D(x)] + E_Q[log(1 - D(G(z)))] (eq. 1) from logits."""
    return _log_sigmoid(logits_real).mean() + _log_one_minus_sigmoid(logits_fake).mean()


def gan_d_loss(D, x_real, x_fake):
    """Algorithm 1: D ascends V, i.e. minimises -V."""
    return -gan_value(_logits(D, x_real), _logits(D, x_fake))


def gan_g_loss(D, x_fake, saturating: bool):
    """Saturating: minimise E[log(1 - D(G(z)))]; non-saturating: maximise E[log D(G(z))] (section 3)."""
    v = _logits(D, x_fake)
    return _log_one_minus_sigmoid(v).mean() if saturating else -_log_sigmoid(v).mean()


# ----------------------------------------------------------------- least squares, WGAN-GP

def lsgan_d_loss(D, x_real, x_fake):
    """Mao et al. 2017 with a = 0, b = c = 1: 1/2 E_P[(D(x) - 1)^2] + 1/2 E_Q[D(G(z))^2]."""
    return 0.5 * ((_logits(D, x_real) - 1) ** 2).mean() + 0.5 * (_logits(D, x_fake) ** 2).mean()


def lsgan_g_loss(D, x_fake):
    return 0.5 * ((_logits(D, x_fake) - 1) ** 2).mean()


def wgan_gp_d_loss(D, x_real, x_fake, u, lam):
    """Gulrajani et al. 2017, Algorithm 1: D(x~) - D(x) + lam (||grad D(x^)|| - 1)^2, x^ = u x + (1 - u) x~."""
    loss = _logits(D, x_fake).mean() - _logits(D, x_real).mean()
    x_hat = torch.stack([u[i] * x_real[i] + (1 - u[i]) * x_fake[i] for i in range(x_real.shape[0])])
    x_hat = x_hat.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(_logits(D, x_hat).sum(), x_hat, create_graph=True)
    norms = torch.sqrt((g.reshape(g.shape[0], -1) ** 2).sum(1))
    return loss + lam * ((norms - 1) ** 2).mean()


def wgan_g_loss(D, x_fake):
    return -_logits(D, x_fake).mean()


# ----------------------------------------------------------------- f-GAN (Nowozin et al. 2016, Table 2)

F_GAN = {
    # name: (output activation g_f(v), conjugate f*(t))
    "gan": (lambda v: -torch.log(1 + torch.exp(-v)), lambda t: -torch.log(1 - torch.exp(t))),
    "js": (lambda v: math.log(2.0) - torch.log(1 + torch.exp(-v)), lambda t: -torch.log(2 - torch.exp(t))),
    "kl": (lambda v: v, lambda t: torch.exp(t - 1)),
    "reverse_kl": (lambda v: -torch.exp(-v), lambda t: -1 - torch.log(-t)),
    "pearson": (lambda v: v, lambda t: 0.25 * t ** 2 + t),
    "squared_hellinger": (lambda v: 1 - torch.exp(-v), lambda t: t / (1 - t)),
}


def fgan_d_loss(D, x_real, x_fake, f):
    """D maximises E_P[T(x)] - E_Q[f*(T(x))], T = g_f(V(x))."""
    g, fstar = F_GAN[f]
    return -(g(_logits(D, x_real)).mean() - fstar(g(_logits(D, x_fake))).mean())


def fgan_g_loss(D, x_fake, f, saturating: bool):
    g, fstar = F_GAN[f]
    t = g(_logits(D, x_fake))
    return -fstar(t).mean() if saturating else -t.mean()


# ----------------------------------------------------------------- Roth et al. 2017

def gamma_schedule(t, gamma0=2.0, alpha=0.01, T=1):
    """Algorithm 1: gamma = gamma0 * alpha^(t/T)."""
    return gamma0 * alpha ** (t / T)


def roth_js_d_loss(D, x_real, x_fake, gamma):
    """Algorithm 1: D ascends F - gamma/2 Omega, Omega = E_P[(1 - D)^2 ||grad phi||^2] + E_Q[D^2 ||grad phi||^2]."""
    omega, _, _ = ref_penalty.js_penalty(D, x_real, x_fake)
    return gan_d_loss(D, x_real, x_fake) + gamma / 2 * omega


def roth_f_penalty(D, x_fake, f):
    """Eq. 19: Omega_f = E_Q[f*''(T) ||grad_x T||^2], differentiating T = g_f(V(x)) itself and taking f*''
    by automatic differentiation of f* (not the closed form the implementation uses)."""
    g, fstar = F_GAN[f]
    x = x_fake.detach().requires_grad_(True)
    t = g(_logits(D, x))
    (grad_t,) = torch.autograd.grad(t.sum(), x, create_graph=True)
    (d1,) = torch.autograd.grad(fstar(t).sum(), t, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), t, create_graph=True)
    sq = (grad_t.reshape(grad_t.shape[0], -1) ** 2).sum(1)
    return (d2 * sq).mean()


def roth_f_d_loss(D, x_real, x_fake, f, gamma):
    return fgan_d_loss(D, x_real, x_fake, f) + gamma / 2 * roth_f_penalty(D, x_fake, f)


def roth_r1_d_loss(D, x_real, x_fake, gamma, base="minimax"):
    pen, _ = ref_penalty.r1_penalty(D, x_real)
    return _base_d_loss(D, x_real, x_fake, base) + gamma / 2 * pen


def roth_r2_d_loss(D, x_real, x_fake, gamma, base="minimax"):
    pen, _ = ref_penalty.r2_penalty(D, x_fake)
    return _base_d_loss(D, x_real, x_fake, base) + gamma / 2 * pen


def _base_d_loss(D, x_real, x_fake, base):
    if base == "minimax":
        return gan_d_loss(D, x_real, x_fake)
    if base == "least_squares":
        return lsgan_d_loss(D, x_real, x_fake)
    raise ValueError(f"base: the reference's R1/R2 losses are 'minimax' or 'least_squares', got {base!r}")


# ----------------------------------------------------------------- NTGAN

def nt_d_value(D, x_real, x_fake, eps, mu, batch="full"):
    """Algorithm 1's L_D^r + L_D^f (divided by m): D ascends it; real and fake batches are separate passes
    holding clean and noisy samples with the same eps (section 2.3)."""
    m = x_real.shape[0]
    if batch == "full":
        lr = _logits(D, torch.cat([x_real, x_real + eps]))
        lf = _logits(D, torch.cat([x_fake, x_fake + eps]))
        L_r = sum(mu * _log_sigmoid(lr[i]) + (1 - mu) * _log_sigmoid(lr[m + i]) for i in range(m)) / m
        L_f = sum(mu * _log_one_minus_sigmoid(lf[i]) + (1 - mu) * _log_one_minus_sigmoid(lf[m + i])
                  for i in range(m)) / m
        return L_r + L_f
    h = m // 2  # {x_1..x_h, x_{h+1} + eps_1, ...}: clean and noisy halves, each averaged and mu-weighted
    lr = _logits(D, torch.cat([x_real[:h], x_real[h:] + eps]))
    lf = _logits(D, torch.cat([x_fake[:h], x_fake[h:] + eps]))
    L_r = mu * _log_sigmoid(lr[:h]).mean() + (1 - mu) * _log_sigmoid(lr[h:]).mean()
    L_f = mu * _log_one_minus_sigmoid(lf[:h]).mean() + (1 - mu) * _log_one_minus_sigmoid(lf[h:]).mean()
    return L_r + L_f


def nt_noise_only_d_value(D, x_real, x_fake, eps):
    """Ablation rows (a)-(c): only x + eps and x~ + eps reach D."""
    return gan_value(_logits(D, x_real + eps), _logits(D, x_fake + eps))


def nt_g_loss(D, x_fake, eps, mu, saturating=False, batch="full"):
    """Algorithm 1's generator step: ascend sum_i mu ln D(x~_i) + (1 - mu) ln D(x~_i + eps_i) (non-saturating),
    or descend mu ln(1 - D(x~)) + (1 - mu) ln(1 - D(x~ + eps)) (saturating)."""
    m = x_fake.shape[0]
    term = _log_one_minus_sigmoid if saturating else (lambda v: -_log_sigmoid(v))
    if batch == "full":
        lf = _logits(D, torch.cat([x_fake, x_fake + eps]))
        return sum(mu * term(lf[i]) + (1 - mu) * term(lf[m + i]) for i in range(m)) / m
    h = m // 2
    lf = _logits(D, torch.cat([x_fake[:h], x_fake[h:] + eps]))
    return mu * term(lf[:h]).mean() + (1 - mu) * term(lf[h:]).mean()


def nt_weighted_d_loss(per_sample_real, per_sample_fake, mu, m):
    """mu-weighted mean of any loss's per-sample terms over {clean (first m), noisy (next m)} batches."""
    def w(t):
        return (mu * t[:m]).mean() + ((1 - mu) * t[m:]).mean()
    return w(per_sample_real) + w(per_sample_fake)


def noise_penalty_generator(eps):
    """Algorithm 1's L_eps = sum_i ||eps_i||^2, divided by m like the other terms."""
    return sum((eps[i] ** 2).sum() for i in range(eps.shape[0])) / eps.shape[0]


def noise_objective(d_value, lam, penalty):
    """Eqs. 5 / 6: the noise model descends (D objective + lambda * penalty)."""
    return d_value + lam * penalty


# ----------------------------------------------------------------- DFM

def dfm_denoiser_loss(r, phi_real, noise, sigma):
    """Eq. 5: ||Phi(x) - r(Phi(x) + sigma n)||^2 averaged over the batch; Phi(x) is data for r."""
    phi = phi_real.detach()
    out = r(phi + sigma * noise)
    return sum(((phi[i] - out[i]) ** 2).sum() for i in range(phi.shape[0])) / phi.shape[0]


def dfm_g_loss(D, r, x_fake, lambda_adv, lambda_denoise):
    """Eq. 4: lambda_denoise ||Phi(G(z)) - r(Phi(G(z)))||^2 - lambda_adv log D(G(z)), r(.) constant: evaluated
    with the batch's statistics, r's BatchNorm running statistics left as they were (the generator term does not
    train r: ref_denoiser.generator_loss)."""
    logits, phi = D.forward_features(x_fake)
    with torch.no_grad():
        target = ref_denoiser.forward_without_update(getattr(r, "net", r), phi)
    denoise = sum(((phi[i] - target[i]) ** 2).sum() for i in range(phi.shape[0])) / phi.shape[0]
    return lambda_denoise * denoise - lambda_adv * _log_sigmoid(logits.reshape(-1)).mean()
