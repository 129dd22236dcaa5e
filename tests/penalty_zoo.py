"""Discriminators the penalty-mode tests run every mode on: nn.Sequential MLPs and convnets the closed form covers
(with running and batch BatchNorm statistics, spectral norm), and conv/norm Ds of other structure that only the jvp
path and the double backward cover."""
import contextlib

import torch
import torch.nn.functional as F
from torch import nn

import models_for_tests as models

# ------------------------------------------------------------------ discriminators

def mlp_leaky():
    return nn.Sequential(nn.Linear(3, 16), nn.LeakyReLU(0.2), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))


def mlp_bn_eval():
    D = nn.Sequential(nn.Flatten(), nn.Linear(3, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 12),
                      nn.Sigmoid(), nn.Dropout(0.5), nn.Linear(12, 8), nn.LeakyReLU(0.1), nn.Linear(8, 1))
    with torch.no_grad():
        D[2].running_mean.uniform_(-0.5, 0.5)
        D[2].running_var.uniform_(0.5, 2.0)
        D[2].weight.uniform_(0.5, 1.5)
        D[2].bias.uniform_(-0.3, 0.3)
    return D.eval()


def mlp_bn_train():
    """BatchNorm1d with batch statistics (training mode), affine and not, a momentum=None layer, a smooth
    activation after one: samples are coupled, mlp_penalty_bn's closed form."""
    return nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16), nn.LeakyReLU(0.2), nn.Linear(16, 12),
                         nn.BatchNorm1d(12, affine=False), nn.Tanh(), nn.Linear(12, 8, bias=False),
                         nn.BatchNorm1d(8, momentum=None), nn.ReLU(), nn.Linear(8, 1))


def mlp_spectral():
    sn = nn.utils.parametrizations.spectral_norm
    return nn.Sequential(sn(nn.Linear(3, 16)), nn.LeakyReLU(0.2), sn(nn.Linear(16, 1)))


def conv_spectral_bn():
    D = models.ConvBND(3, 8, 8)
    sn = nn.utils.parametrizations.spectral_norm
    D.net[0] = sn(D.net[0])
    D.net[2] = sn(D.net[2])
    D.head = sn(D.head)
    return D


def conv_leaky():
    """A plain convnet: the closed form's one-weight-gradient-per-layer case, picked by "auto"."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 16, 4, 2, 1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 1))


def conv_bn_train():
    """DCGAN blocks with BatchNorm2d batch statistics (affine and not, momentum=None), a smooth activation, a
    bias-free convolution and a strided, grouped one."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 8, 4, 2, 1, bias=False),
                         nn.BatchNorm2d(8), nn.LeakyReLU(0.2), nn.Conv2d(8, 12, 3, 2, 1, groups=4),
                         nn.BatchNorm2d(12, affine=False, momentum=None), nn.Tanh(), nn.Flatten(),
                         nn.Linear(12 * 2 * 2, 1))


def conv_bn_eval_conv_head():
    """BatchNorm2d with running statistics, a sigmoid, dropout in eval mode, and a convolution as the output layer
    (a 1x1 map per sample)."""
    D = nn.Sequential(nn.Conv2d(3, 6, 3, 2, 1), nn.BatchNorm2d(6), nn.Sigmoid(), nn.Dropout(0.5),
                      nn.Conv2d(6, 1, 4, 1, 0), nn.Flatten())
    with torch.no_grad():
        D[1].running_mean.uniform_(-0.5, 0.5)
        D[1].running_var.uniform_(0.5, 2.0)
        D[1].weight.uniform_(0.5, 1.5)
    return D.eval()


def dcgan_unflattened():
    """The DCGAN tutorial's D: strided convolutions, BatchNorm2d batch statistics, and a one-channel convolution as
    the output layer with no Flatten after it, so D returns (B, 1, 1, 1)."""
    return nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1, bias=False), nn.LeakyReLU(0.2), nn.Conv2d(8, 16, 4, 2, 1, bias=False),
                         nn.BatchNorm2d(16), nn.LeakyReLU(0.2), nn.Conv2d(16, 1, 2, 1, 0, bias=False))


def conv1d_dilated():
    """Conv1d with stride, dilation and padding, BatchNorm1d on (B, C, L) with batch statistics."""
    return nn.Sequential(nn.Conv1d(3, 4, 3, stride=2, padding=2, dilation=2), nn.BatchNorm1d(4), nn.LeakyReLU(0.2),
                         nn.Conv1d(4, 4, 2, stride=1), nn.Flatten(), nn.Linear(4 * 3, 1))


def conv3d_bn_train():
    """Conv3d with groups and BatchNorm3d with batch statistics, a smooth activation after it."""
    return nn.Sequential(nn.Conv3d(2, 4, 3, 1, 1, groups=2), nn.BatchNorm3d(4), nn.Tanh(),
                         nn.Conv3d(4, 4, 2, 2, 0), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(4 * 2 * 2 * 2, 1))


def conv_spectral():
    sn = nn.utils.parametrizations.spectral_norm
    return nn.Sequential(sn(nn.Conv2d(3, 8, 4, 2, 1)), nn.LeakyReLU(0.2), nn.Flatten(), sn(nn.Linear(8 * 4 * 4, 1)))


class NormZoo(nn.Module):
    """LayerNorm, InstanceNorm with running stats, BatchNorm and a softmax: the functions whose forward-mode
    formulas torch's reverse mode gets wrong (or cannot differentiate), so the jvp path must replace them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 1, 1)
        self.inorm = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
        self.bn = nn.BatchNorm2d(4)
        self.ln = nn.LayerNorm([4, 8, 8])
        self.q = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        h = F.leaky_relu(self.bn(self.inorm(self.conv(x))), 0.2)
        h = self.ln(h).flatten(2).transpose(1, 2)                      # (B, 64, 4)
        att = torch.softmax(self.q(h) @ h.transpose(1, 2) / 2, dim=-1)  # (B, 64, 64)
        h = F.log_softmax(att @ h, dim=-1) + torch.logsumexp(h, dim=1, keepdim=True)
        return self.head(h.mean(1))


class DropoutConvD(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.LeakyReLU(0.2), nn.Dropout(0.3), nn.Flatten(),
                                 nn.Linear(8 * 4 * 4, 1))

    def forward(self, x):
        return self.net(x)


class WithSequential(nn.Module):
    """A custom MLP class that opts into the closed form through as_sequential()."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.out = nn.Linear(16, 1)

    def forward(self, x):
        return self.out(self.body(x.flatten(1))).reshape(-1)

    def as_sequential(self):
        return nn.Sequential(nn.Flatten(), *self.body, self.out)


class AttentionD(nn.Module):
    """Two-head self-attention over an image's rows through F.scaled_dot_product_attention (causal, with an additive
    and a boolean mask), whose fused kernels have no forward-mode formula reverse mode can use. math: run torch's
    math kernel (composite ops), the one with a double backward (the fused CPU/CUDA kernels have none)."""

    def __init__(self, math: bool = True):
        super().__init__()
        self.math = math
        self.qkv = nn.Linear(24, 3 * 8)
        self.head = nn.Linear(8, 1)
        self.register_buffer("bias", 0.3 * torch.randn(8, 8))
        self.register_buffer("keep", torch.rand(8, 8) > 0.3)
        self.keep.fill_diagonal_(True)  # every query attends somewhere

    def forward(self, x):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH) if self.math else contextlib.nullcontext():
            return self._attend(x)

    def _attend(self, x):
        B = x.shape[0]
        q, k, v = self.qkv(x.transpose(1, 2).reshape(B, 8, 24)).reshape(B, 8, 2, 12).transpose(1, 2).chunk(3, -1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        b = F.scaled_dot_product_attention(q, a, v, attn_mask=self.bias, scale=0.7)
        c = F.scaled_dot_product_attention(a, k, b, attn_mask=self.keep)
        return self.head((a + b * c).transpose(1, 2).reshape(B, 8, 8).mean(1))


IMG = lambda B: torch.randn(B, 3, 8, 8)  # noqa: E731
VEC = lambda B: torch.randn(B, 3)  # noqa: E731
SEQ = lambda B: torch.randn(B, 3, 8)  # noqa: E731
VOL = lambda B: torch.randn(B, 2, 4, 4, 4)  # noqa: E731
DS = {
    # name: (factory, input maker, the mode "auto" must pick on CUDA; tests on CPU tensors get that choice with
    # helpers.auto_as_on_cuda, as on CPU "auto" also runs the closed form for batch statistics)
    "mlp_leaky": (mlp_leaky, VEC, "mlp"),
    "mlp_tanh": (lambda: models.mlp_d(3), VEC, "mlp"),
    "mlp_bn_eval": (mlp_bn_eval, VEC, "mlp"),
    "mlp_spectral": (mlp_spectral, VEC, "mlp"),
    "mlp_bn_train": (mlp_bn_train, VEC, "jvp"),  # on CUDA "auto" leaves batch statistics to jvp; "mlp" runs them
    "conv_leaky": (conv_leaky, IMG, "mlp"),
    "conv_bn_eval_conv_head": (conv_bn_eval_conv_head, IMG, "mlp"),
    "conv_spectral": (conv_spectral, IMG, "mlp"),
    "conv_bn_train": (conv_bn_train, IMG, "jvp"),  # batch statistics, as mlp_bn_train
    "dcgan_unflattened": (dcgan_unflattened, IMG, "jvp"),  # logits (B, 1, 1, 1); batch statistics
    "conv1d_dilated": (conv1d_dilated, SEQ, "jvp"),
    "conv3d_bn_train": (conv3d_bn_train, VOL, "jvp"),
    "conv_bn": (lambda: models.ConvBND(3, 8, 8), IMG, "jvp"),
    "groupnorm_residual": (lambda: models.GroupNormResD(3, 8), IMG, "jvp"),
    "conv_spectral_bn": (conv_spectral_bn, IMG, "jvp"),
    "attention": (AttentionD, IMG, "jvp"),
}
# the Ds mode="mlp" (the closed form) runs: on CUDA "auto" picks it for all but those with batch statistics
MLPS = [k for k, v in DS.items() if v[2] == "mlp"] + ["mlp_bn_train", "conv_bn_train", "dcgan_unflattened",
                                                     "conv1d_dilated", "conv3d_bn_train"]
