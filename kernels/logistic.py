"""The logistic pieces of the JS weights, shared by the Triton kernels of the penalty (kernels/penalty.py) and of the
NTGAN losses (kernels/nt_losses.py); the math mirrors csrc/include/fastgan/penalty_math.h."""
import triton
import triton.language as tl


@triton.jit
def _logistic(psi):
    """e = exp(-|psi|), sigmoid(psi) and sigmoid(-psi), from one exponential and one division (csrc's
    penalty::sigmoids_from likewise; nt_losses' softplus takes the same e). Written as two sigmoids, the
    real side of nt_losses' forward took two exponentials a logit (sm_90 SASS: 68 instructions a logit, now 61)."""
    e = tl.exp(-tl.abs(psi))
    r = 1.0 / (1.0 + e)
    er = e * r
    pos = psi >= 0
    return e, tl.where(pos, r, er), tl.where(pos, er, r)


@triton.jit
def _js(s, q, REAL: tl.constexpr):
    """The JS weight and its slope from s = sigmoid(psi), q = sigmoid(-psi)."""
    if REAL:
        w = q * q
        dw = -2.0 * s * q * q
    else:
        w = s * s
        dw = 2.0 * s * s * q
    return w, dw
