"""A sparse tensor given to a public op: the kernels read data pointers, which it does not have, so the calls
failed inside with torch's "Cannot access data pointer of Tensor that doesn't have storage" or "unsupported
memory format option Contiguous" (an audit's cases, 2026-12-06). Each now names the argument."""
import re

import pytest
import torch
from torch import nn

from fastgan.ops import (Denoiser, bn_relu, denoiser_loss, grad_norm_penalty, gradient_penalty, nt_losses,
                         noisy_clean_batch, use_backend)


def _sp(t):
    return t.to_sparse()


def _r(*shape):
    return torch.randn(*shape)


CASES = {
    "grad": lambda: grad_norm_penalty(_sp(_r(4, 3)), _r(4)),
    "logits": lambda: grad_norm_penalty(_r(4, 3), _sp(_r(4))),
    "x": lambda: gradient_penalty(nn.Linear(3, 1), _sp(_r(4, 3)), "one"),
    "logits_real": lambda: nt_losses(_sp(_r(8)), _r(8), 0.5),
    "logits_fake": lambda: nt_losses(_r(8), _sp(_r(8)), 0.5),
    "mu": lambda: nt_losses(_r(8), _r(8), _sp(torch.ones(1))),
    "x_real": lambda: noisy_clean_batch(_sp(_r(4, 3)), _r(4, 3), 0.5),
    "x_fake": lambda: noisy_clean_batch(_r(4, 3), _sp(_r(4, 3)), 0.5),
    "noise (eps)": lambda: noisy_clean_batch(_r(4, 3), _r(4, 3), _sp(_r(4, 3))),
    "noise (sigma)": lambda: noisy_clean_batch(_r(4, 3), _r(4, 3), _sp(torch.ones(1))),
    "h": lambda: Denoiser(3, 4, 1)(_sp(_r(4, 3))),
    "y": lambda: bn_relu(_sp(_r(4, 3)), None, torch.ones(3), torch.zeros(3)),
    "gamma": lambda: bn_relu(_r(4, 3), None, _sp(torch.ones(3)), torch.zeros(3)),
    "running_mean": lambda: bn_relu(_r(4, 3), None, torch.ones(3), torch.zeros(3), _sp(torch.zeros(3)),
                                    torch.ones(3)),
    "weights[1]": lambda: denoiser_loss(_r(4, 3), [_r(4, 3), _sp(_r(3, 4))], [_r(4), _r(3)], [torch.ones(4)],
                                        [torch.zeros(4)]),
}


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_sparse_argument_is_named(case, backend):
    name = re.escape(case.split(" ")[0])
    with use_backend(backend):
        with pytest.raises(TypeError, match=rf"^{name} must be a strided \(dense\) tensor, got layout "
                                            r"torch.sparse_coo; call .to_dense\(\)"):
            CASES[case]()
