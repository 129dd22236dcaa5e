"""The logistic pieces of the JS weights, shared by the Triton kernels of the penalty (kernels/penalty.py) and of the
NTGAN losses (kernels/nt_losses.py); the math mirrors csrc/include/fastgan/penalty_math.h."""
import triton
import triton.language as tl


@triton.jit
def _logistic(psi, PRECISE: tl.constexpr):
    """e = exp(-|psi|), sigmoid(psi) and sigmoid(-psi), from one exponential and one division (csrc's
    penalty::sigmoids_from likewise; nt_losses' softplus takes the same e). Written as two sigmoids, the
    real side of nt_losses' forward took two exponentials a logit (sm_90 SASS: 68 instructions a logit, now 61).
    PRECISE: float32's 1 / (1 + e) rounded correctly (div_rn), where `/` is div.full on a GPU, within 2 ulp: a JS
    weight's slope, -2 s q^2 or 2 s^2 q, carries that error three times (the interpreter divides exactly; with every
    quotient 2 ulp off, the logit gradients of nt_losses and of the penalty missed the 2x rule: the tests named
    test_fp32_with_a_gpus_division_triton). nt_losses' forward, which needs no slope, keeps `/`."""
    e = tl.exp(-tl.abs(psi))
    if PRECISE and e.dtype == tl.float32:
        r = tl.math.div_rn(tl.full([], 1.0, tl.float32), 1.0 + e)
    else:
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
