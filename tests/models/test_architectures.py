"""Output shapes and the published layer structure of every architecture."""
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from torch.nn.utils import parametrize

from fastgan.config import ConfigError
from fastgan.models import (Maxout, ModelConfig, build_discriminator, build_generator, build_noise_generator)
from fastgan.models.base import ScaledTanh

CASES = [
    ("mlp", (3,)), ("mlp", (2,)), ("mlp", (1, 28, 28)),
    ("goodfellow", (1, 28, 28)), ("goodfellow", (2,)),
    ("dcgan", (3, 32, 32)), ("dcgan", (1, 28, 28)),
    ("resnet", (3, 64, 64)), ("resnet", (3, 32, 32)), ("resnet", (1, 16, 16)),
]


@pytest.mark.parametrize("arch,shape", CASES)
def test_shapes(arch, shape):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch)
    G, D = build_generator(cfg, shape), build_discriminator(cfg, shape)
    z = G.sample_latent(4, torch.Generator().manual_seed(0))
    assert z.shape == (4, G.latent_dim)
    x = G(z)
    assert x.shape == (4, *shape) and x.dtype == torch.float32
    if len(shape) == 3:  # images: tanh output in [-1, 1]
        assert x.abs().max() <= 1
    logits, feats = D.forward_features(x)
    assert logits.shape == (4,) and feats.shape == (4, D.feature_dim)
    D.eval()  # dropout off: the three entry points agree
    l1, f1 = D.forward_features(x)
    assert torch.equal(D(x), l1) and torch.equal(D.features(x), f1)


def test_latent_defaults_follow_papers():
    assert build_generator(ModelConfig(arch="mlp"), (3,)).latent_dim == 2  # Roth et al.: 2-d latent
    assert build_generator(ModelConfig(arch="goodfellow"), (1, 28, 28)).latent_dim == 100
    assert build_generator(ModelConfig(arch="dcgan"), (3, 32, 32)).latent_dim == 128  # NTGAN Table 1
    assert build_generator(ModelConfig(arch="resnet"), (3, 32, 32)).latent_dim == 128  # Gulrajani / Roth 7.4
    assert build_generator(ModelConfig(latent_dim=15), (3,)).latent_dim == 15


def test_roth_mlp_structure_and_init():
    torch.manual_seed(0)
    G, D = build_generator(ModelConfig(), (3,)), build_discriminator(ModelConfig(), (3,))
    lin = [m for m in G.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(2, 128), (128, 128), (128, 3)]
    assert sum(isinstance(m, nn.Tanh) for m in G.modules()) == 2
    lin = [m for m in D.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(3, 128), (128, 128), (128, 1)]
    assert D.feature_dim == 128
    # truncated normal, std 0.1 cut at 2 std (TensorFlow's truncated_normal_initializer in the authors' code)
    w = torch.cat([m.weight.flatten() for m in lin + [lin[0]]])
    assert w.abs().max() <= 0.2 and 0.08 < w.std() < 0.096
    assert all((m.bias == 0).all() for m in lin)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in D.modules()) == 0


def test_goodfellow_structure():
    D = build_discriminator(ModelConfig(arch="goodfellow"), (1, 28, 28))
    maxouts = [m for m in D.modules() if isinstance(m, Maxout)]
    assert [(m.linear.in_features, m.units, m.pieces) for m in maxouts] == [(784, 240, 5), (240, 240, 5)]
    drops = [m.p for m in D.modules() if isinstance(m, nn.Dropout)]
    assert drops == [0.2, 0.5, 0.5]  # input keep 0.8, hidden keep 0.5 (mnist.yaml)
    assert max(m.linear.weight.abs().max() for m in maxouts) <= 0.005
    G = build_generator(ModelConfig(arch="goodfellow"), (1, 28, 28))
    lin = [m for m in G.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in lin] == [1200, 1200, 784]
    assert sum(isinstance(m, nn.ReLU) for m in G.modules()) == 2


def test_maxout_is_max_over_pieces():
    torch.manual_seed(0)
    m = Maxout(6, 4, 3)
    x = torch.randn(5, 6)
    y = m.linear(x).view(5, 4, 3)
    assert torch.equal(m(x), y.max(dim=2).values)
    one = Maxout(6, 4, 1)
    assert torch.equal(one(x), torch.relu(one.linear(x)))


def test_dropout_only_in_train_mode():
    D = build_discriminator(ModelConfig(arch="goodfellow"), (2,))
    x = torch.randn(64, 2)
    torch.manual_seed(1)
    a = D(x)
    torch.manual_seed(2)
    assert not torch.equal(a, D(x))
    D.eval()
    assert torch.equal(D(x), D(x))


def _convs(module, cls):
    return [m for m in module.modules() if isinstance(m, cls)]


def test_dcgan_matches_ntgan_table1_cifar():
    G = build_generator(ModelConfig(arch="dcgan"), (3, 32, 32))
    assert G.fc.out_features == 4 * 4 * 512  # FC BN ReLU 4x4xM, M = 512
    ct = _convs(G, nn.ConvTranspose2d)
    assert [(m.out_channels, m.kernel_size, m.stride) for m in ct] == [
        (256, (4, 4), (2, 2)), (128, (4, 4), (2, 2)), (64, (4, 4), (2, 2)), (3, (3, 3), (1, 1))]
    assert len(_convs(G, nn.BatchNorm2d)) == 4 and isinstance(G.net[-1], nn.Tanh)
    D = build_discriminator(ModelConfig(arch="dcgan"), (3, 32, 32))
    cv = _convs(D, nn.Conv2d)
    assert [(m.out_channels, m.kernel_size, m.stride) for m in cv] == [
        (64, (3, 3), (1, 1)), (64, (4, 4), (2, 2)), (128, (4, 4), (2, 2)), (256, (4, 4), (2, 2)), (512, (4, 4), (2, 2))]
    assert isinstance(D.net[1], nn.LeakyReLU) and D.net[1].negative_slope == 0.2  # first layer: no BN
    assert len(_convs(D, nn.BatchNorm2d)) == 4
    assert D.feature_dim == 512 * 2 * 2 and D.out.in_features == D.feature_dim
    # DCGAN init: N(0, 0.02)
    w = torch.cat([m.weight.flatten() for m in cv])
    assert abs(w.std().item() - 0.02) < 0.002


def test_dcgan_rule_gives_stl_and_mnist_variants():
    # STL-10 (64x64): one more layer each, M = 1024 (Table 1's parenthesised rows)
    G = build_generator(ModelConfig(arch="dcgan", dcgan_width=4), (3, 64, 64))
    assert G.m == 4 * 16 and G.start == (4, 4) and len(_convs(G, nn.ConvTranspose2d)) == 5
    D = build_discriminator(ModelConfig(arch="dcgan", dcgan_width=4), (3, 64, 64))
    assert [m.out_channels for m in _convs(D, nn.Conv2d)] == [4, 4, 8, 16, 32, 64]
    G = build_generator(ModelConfig(arch="dcgan"), (1, 28, 28))
    assert G.start == (7, 7) and G.m == 256
    D = build_discriminator(ModelConfig(arch="dcgan"), (1, 28, 28))
    assert D.feature_dim == 128 * 7 * 7


def test_ntgan_table4_filters_and_tanh():
    # Table 4 (f): G's filters [64, 64, 64, 64] at 32x32 instead of [512, 256, 128, 64]
    cfg = ModelConfig(arch="dcgan", dcgan_g_filters=[64, 64, 64, 64])
    G = build_generator(cfg, (3, 32, 32))
    assert G.fc.out_features == 4 * 4 * 64 and G.filters == (64, 64, 64, 64)
    assert [m.out_channels for m in _convs(G, nn.ConvTranspose2d)] == [64, 64, 64, 3]
    assert [m.num_features for m in _convs(G, nn.BatchNorm2d)] == [64, 64, 64, 64]
    # the noise generator is G's architecture with the filters divided by noise_width_divisor
    N = build_noise_generator(cfg, (3, 32, 32))
    assert N.filters == (8, 8, 8, 8) and N(torch.randn(2, 128)).shape == (2, 3, 32, 32)
    # Table 4 (b): tanh for every hidden activation (G's ReLUs and D's leaky ReLUs), the outputs unchanged
    cfg = ModelConfig(arch="dcgan", dcgan_activation="tanh", dcgan_width=8)
    G, D = build_generator(cfg, (1, 28, 28)), build_discriminator(cfg, (1, 28, 28))
    assert not _convs(G, (nn.ReLU, nn.LeakyReLU)) and not _convs(D, (nn.ReLU, nn.LeakyReLU))
    assert len(_convs(G, nn.Tanh)) == 3 + 1 and len(_convs(D, nn.Tanh)) == 3  # 3 hidden + the image output
    assert G(torch.randn(4, 128)).shape == (4, 1, 28, 28) and D(torch.randn(4, 1, 28, 28)).shape == (4,)
    assert _convs(build_noise_generator(cfg, (1, 28, 28)), nn.Tanh)
    # the defaults are Table 1's
    G = build_generator(ModelConfig(arch="dcgan"), (3, 32, 32))
    assert G.filters == (512, 256, 128, 64) and len(_convs(G, nn.ReLU)) == 4


@pytest.mark.parametrize("width", [4, 12, 20, 64])
def test_noise_generator_channels_are_gs_divided(width):
    # "the number of filters reduced by a factor of eight": each of G's channel counts // 8, whether G's come
    # from dcgan_width or are spelled out in dcgan_g_filters (dividing the width before doubling it gave
    # (4, 2, 1) for G's (48, 24, 12))
    shape = (1, 28, 28)
    G = build_generator(ModelConfig(arch="dcgan", dcgan_width=width), shape)
    want = tuple(max(1, f // 8) for f in G.filters)
    assert build_noise_generator(ModelConfig(arch="dcgan", dcgan_width=width), shape).filters == want
    spelled = ModelConfig(arch="dcgan", dcgan_g_filters=list(G.filters))
    assert build_noise_generator(spelled, shape).filters == want
    assert build_noise_generator(ModelConfig(arch="dcgan", dcgan_width=width, noise_width_divisor=1),
                                 shape).filters == G.filters


def test_ntgan_table4_options_errors():
    with pytest.raises(ConfigError, match=r"model\.dcgan_g_filters: a 32x32 image needs 4 channel counts .*"
                                          r"got \[64, 64, 64\]"):
        build_generator(ModelConfig(arch="dcgan", dcgan_g_filters=(64, 64, 64)), (3, 32, 32))
    with pytest.raises(ConfigError, match=r"model\.dcgan_g_filters: a 32x32 image needs 4"):
        build_noise_generator(ModelConfig(arch="dcgan", dcgan_g_filters=(64, 64, 64)), (3, 32, 32))
    with pytest.raises(ValueError, match=r"model\.dcgan_g_filters: only used by arch 'dcgan', got arch 'mlp'"):
        ModelConfig(dcgan_g_filters=(4, 4))
    with pytest.raises(ValueError, match=r"model\.dcgan_activation: only used by arch 'dcgan', got arch 'goodfellow'"):
        ModelConfig(arch="goodfellow", dcgan_activation="tanh")
    with pytest.raises(ValueError, match=r"model\.dcgan_g_filters: must be a non-empty list of positive ints"):
        ModelConfig(arch="dcgan", dcgan_g_filters=(64, 0))
    from fastgan.models.dcgan import DCGANDiscriminator, DCGANGenerator

    with pytest.raises(ValueError, match=r"filters: a \(1, 8, 8\) image needs 2 positive channel counts"):
        DCGANGenerator(4, (1, 8, 8), filters=[4, True])
    with pytest.raises(ValueError, match=r"activation: must be one of \('relu', 'tanh'\), got 'elu'"):
        DCGANDiscriminator((1, 8, 8), activation_name="elu")


def test_batchnorm_and_init_options():
    G = build_generator(ModelConfig(arch="dcgan", g_batchnorm=False), (3, 16, 16))
    assert not _convs(G, nn.BatchNorm2d)
    D = build_discriminator(ModelConfig(arch="mlp", d_batchnorm=True, d_hidden=(8, 8, 8)), (3,))
    assert len(_convs(D, nn.BatchNorm1d)) == 2  # all hidden layers but the first
    torch.manual_seed(0)
    a = build_generator(ModelConfig(init="torch"), (3,))
    w = a.net[0].weight
    assert (w.abs() > 0.2).any()  # PyTorch default (bound 1/sqrt(2)) exceeds the paper's 2-std cut


def test_dcgan_input_batchnorm_normalises_ds_input_images():
    """NTGAN 6.3: SNGAN + NT batch-normalizes D's inputs; the shipped config does, and other archs refuse it."""
    from fastgan.config import load_config

    D = build_discriminator(ModelConfig(arch="dcgan", d_batchnorm=False, d_input_batchnorm=True), (1, 28, 28))
    assert isinstance(D.net[0], nn.BatchNorm2d) and D.net[0].num_features == 1 and isinstance(D.net[1], nn.Conv2d)
    assert len(_convs(D, nn.BatchNorm2d)) == 1
    x = torch.randn(6, 1, 28, 28) * 3 + 5
    D.train()
    a = D(x)
    torch.testing.assert_close(D(x * 2 - 1), a)  # batch statistics: the logits ignore an affine map of the input
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "ntgan-fmnist-table3-sngan-nt.yaml")
    D = build_discriminator(cfg.model, (1, 28, 28))
    assert isinstance(D.net[0], nn.BatchNorm2d) and len(_convs(D, nn.BatchNorm2d)) == 1
    with pytest.raises(ValueError, match=r"model\.d_input_batchnorm: only used by arch 'dcgan', got arch 'mlp'"):
        ModelConfig(arch="mlp", d_input_batchnorm=True)


def test_bad_inputs_name_the_argument():
    cfg = ModelConfig()
    G, D = build_generator(cfg, (3,)), build_discriminator(cfg, (3,))
    with pytest.raises(ValueError, match="z"):
        G(torch.randn(4, 3))
    with pytest.raises(TypeError, match="z"):
        G(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="x"):
        D(torch.randn(4, 2))
    with pytest.raises(ValueError, match="x"):
        D(torch.randn(4, 3, 1))
    with pytest.raises(ValueError, match="data_shape"):
        build_generator(cfg, (3, 4))
    with pytest.raises(ValueError, match="data_shape"):
        build_discriminator(ModelConfig(arch="dcgan"), (3,))
    with pytest.raises(TypeError, match="cfg"):
        build_generator({"arch": "mlp"}, (3,))


def test_noise_generator_same_latent_as_g():
    for arch, shape in (("mlp", (3,)), ("dcgan", (3, 32, 32)), ("resnet", (3, 32, 32))):
        cfg = ModelConfig(arch=arch)
        assert build_noise_generator(cfg, shape).latent_dim == build_generator(cfg, shape).latent_dim


def _layer(m):
    """A layer as a short, comparable description."""
    if isinstance(m, nn.Linear):
        return ("fc", m.in_features, m.out_features)
    if isinstance(m, nn.ConvTranspose2d):
        return ("deconv", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
    if isinstance(m, nn.Conv2d):
        return ("conv", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
    if isinstance(m, nn.BatchNorm2d):
        return ("bn", m.num_features)
    if isinstance(m, nn.LeakyReLU):
        return ("lrelu", m.negative_slope)
    if isinstance(m, nn.ReLU):
        return ("relu",)
    if isinstance(m, nn.Tanh):
        return ("tanh",)
    if isinstance(m, nn.Flatten):
        return ("flatten",)
    return (type(m).__name__,)


TABLE1_G = [("fc", 128, 4 * 4 * 512), ("bn", 512), ("relu",),                 # FC BN ReLU 4x4xM
            ("deconv", 512, 256, 4, 2, 1), ("bn", 256), ("relu",),              # deconv 4x4 s2 BN ReLU 256
            ("deconv", 256, 128, 4, 2, 1), ("bn", 128), ("relu",),              # ... 128
            ("deconv", 128, 64, 4, 2, 1), ("bn", 64), ("relu",),                # ... 64
            ("deconv", 64, 3, 3, 1, 1), ("tanh",)]                              # deconv 3x3 s1 tanh 3


TABLE1_D = [("conv", 3, 64, 3, 1, 1), ("lrelu", 0.2),                           # conv 3x3 s1 lReLU 64 (no BN)
            ("conv", 64, 64, 4, 2, 1), ("bn", 64), ("lrelu", 0.2),              # conv 4x4 s2 BN lReLU 64
            ("conv", 64, 128, 4, 2, 1), ("bn", 128), ("lrelu", 0.2),            # ... 128
            ("conv", 128, 256, 4, 2, 1), ("bn", 256), ("lrelu", 0.2),           # ... 256
            ("conv", 256, 512, 4, 2, 1), ("bn", 512), ("lrelu", 0.2),           # ... 512
            ("flatten",), ("fc", 512 * 2 * 2, 1)]                               # fully-connected 1 (logit)


def test_dcgan_layer_sequence_is_ntgan_table1_row_by_row():
    G = build_generator(ModelConfig(arch="dcgan"), (3, 32, 32))
    assert [_layer(G.fc)] + [_layer(m) for m in G.net] == TABLE1_G
    D = build_discriminator(ModelConfig(arch="dcgan"), (3, 32, 32))
    assert [_layer(m) for m in D.as_sequential()] == TABLE1_D
    # plain affine layers: the logit layer has its bias (the sigmoid's threshold), as does G's FC
    assert D.out.bias is not None and G.fc.bias is not None


def test_dcgan_noise_generator_is_table1_g_with_channels_over_8():
    # "The noise-generator network follows the generator architecture with the number of channels reduced by a
    # factor of 8" (Table 1's caption); its output is 2 * tanh (NTGAN appendix 6.3).
    want = []
    for row in TABLE1_G[:-1]:
        if row[0] == "fc":
            want.append(("fc", 128, 4 * 4 * 512 // 8))
        elif row[0] == "deconv":
            want.append(("deconv", row[1] // 8, row[2] // 8 if row[2] != 3 else 3, *row[3:]))
        elif row[0] == "bn":
            want.append(("bn", row[1] // 8))
        else:
            want.append(row)
    N = build_noise_generator(ModelConfig(arch="dcgan"), (3, 32, 32))
    got = [_layer(N.fc)] + [_layer(m) for m in N.net]
    assert got[:-1] == want and got[-1] == ("ScaledTanh",) and N.net[-1].scale == 2.0


def test_dcgan_every_leaky_relu_uses_the_configured_slope():
    D = build_discriminator(ModelConfig(arch="dcgan", leaky_slope=0.1, dcgan_width=4), (1, 16, 16))
    slopes = [m.negative_slope for m in D.modules() if isinstance(m, nn.LeakyReLU)]
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert slopes == [0.1] * len(convs) and len(convs) == 4  # one lReLU after every conv (3 halvings + the first)


def test_goodfellow_discriminator_drops_out_the_logit_layers_input():
    # mnist.yaml: dropout (keep 0.5) on the input of every layer after the first, the sigmoid logit layer included
    torch.manual_seed(0)
    D = build_discriminator(ModelConfig(arch="goodfellow"), (2,))
    with torch.no_grad():
        D.out.weight.fill_(1.0)
        D.out.bias.zero_()
    h = torch.ones(512, D.feature_dim)
    D.train()
    y = D.head(h)
    # kept units are scaled by 1/keep = 2: the logit is 2 * (number kept), varying from row to row around 240
    assert y.std() > 1.0 and abs(y.mean().item() - D.feature_dim) < 3.0
    assert torch.equal(torch.remainder(y, 2.0), torch.zeros_like(y))
    D.eval()
    assert torch.equal(D.head(h), torch.full((512, 1), float(D.feature_dim)))


def test_goodfellow_batchnorm_skips_the_first_maxout_layer():
    # model.d_batchnorm: "BatchNorm ... in D's hidden layers except the first"
    D = build_discriminator(ModelConfig(arch="goodfellow", d_batchnorm=True, d_hidden=(8, 8, 8)), (4,))
    maxouts = [m for m in D.modules() if isinstance(m, Maxout)]
    assert [type(m.norm) for m in maxouts] == [nn.Identity, nn.BatchNorm1d, nn.BatchNorm1d]
    assert [m.norm.num_features for m in maxouts[1:]] == [8 * 5, 8 * 5]


def test_goodfellow_generator_paper_init_uniform_005():
    # mnist.yaml: G's irange 0.05 (uniform in [-0.05, 0.05]), biases 0
    torch.manual_seed(0)
    G = build_generator(ModelConfig(arch="goodfellow"), (1, 28, 28))
    lin = [m for m in G.modules() if isinstance(m, nn.Linear)]
    w = torch.cat([m.weight.flatten() for m in lin])
    assert w.abs().max() <= 0.05 and w.abs().max() > 0.049
    # uniform on [-a, a]: std a / sqrt(3)
    assert abs(w.std().item() - 0.05 / 3 ** 0.5) < 1e-3


@pytest.mark.parametrize("arch", ["mlp", "goodfellow"])
def test_fully_connected_generator_batchnorm_in_every_hidden_layer(arch):
    # model.g_batchnorm: "BatchNorm in G's hidden layers"
    G = build_generator(ModelConfig(arch=arch, g_batchnorm=True, g_hidden=(8, 8, 8)), (3,))
    assert [m.num_features for m in G.modules() if isinstance(m, nn.BatchNorm1d)] == [8, 8, 8]


# ------------------------------------------------------------------ resnet (Roth et al. 7.4, Gulrajani's 64x64 ResNet)

def _blocks(module):
    from fastgan.models import ResidualBlock

    return [m for m in module.modules() if isinstance(m, ResidualBlock)]


def _shapes_through(module, x, kinds):
    """Output shapes of every submodule of the given kinds, in call order, for one forward of x."""
    seen, hooks = [], [m.register_forward_hook(lambda m, i, o: seen.append((type(m).__name__, tuple(o.shape))))
                       for m in module.modules() if isinstance(m, kinds)]
    try:
        module(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("side", [32, 64])
def test_resnet_shapes_follow_gulrajanis_64x64_plan(side):
    """G: linear to (8dim, s, s), s = side / 16, four up blocks 8dim -> 8dim -> 4dim -> 2dim -> dim, each doubling the
    side, BN-ReLU-conv3x3 to the image; D: conv3x3 to dim, four down blocks dim -> 2dim -> 4dim -> 8dim -> 8dim, each
    halving it, a linear layer on the flattened (8dim, s, s)."""
    from fastgan.models import ResidualBlock

    w, s, b = 3, side // 16, 2
    cfg = ModelConfig(arch="resnet", resnet_width=w)
    G, D = build_generator(cfg, (3, side, side)), build_discriminator(cfg, (3, side, side))
    assert G.start == s and G.fc.out_features == 8 * w * s * s and D.feature_dim == 8 * w * s * s
    z = G.sample_latent(b, torch.Generator().manual_seed(0))
    assert _shapes_through(G, z, ResidualBlock) == [
        ("ResidualBlock", (b, 8 * w, 2 * s, 2 * s)), ("ResidualBlock", (b, 4 * w, 4 * s, 4 * s)),
        ("ResidualBlock", (b, 2 * w, 8 * s, 8 * s)), ("ResidualBlock", (b, w, 16 * s, 16 * s))]
    x = G(z)
    assert x.shape == (b, 3, side, side) and x.abs().max() <= 1
    assert _shapes_through(D, x, ResidualBlock) == [
        ("ResidualBlock", (b, 2 * w, 8 * s, 8 * s)), ("ResidualBlock", (b, 4 * w, 4 * s, 4 * s)),
        ("ResidualBlock", (b, 8 * w, 2 * s, 2 * s)), ("ResidualBlock", (b, 8 * w, s, s))]
    logits, feats = D.forward_features(x)
    assert logits.shape == (b,) and feats.shape == (b, 8 * w * s * s) and D.out.in_features == D.feature_dim
    assert [(blk.cin, blk.cout, blk.resample) for blk in _blocks(G)] == [
        (8 * w, 8 * w, "up"), (8 * w, 4 * w, "up"), (4 * w, 2 * w, "up"), (2 * w, w, "up")]
    assert [(blk.cin, blk.cout, blk.resample) for blk in _blocks(D)] == [
        (w, 2 * w, "down"), (2 * w, 4 * w, "down"), (4 * w, 8 * w, "down"), (8 * w, 8 * w, "down")]
    # G ends BN-ReLU-conv3x3-tanh; D starts with a 3x3 conv and has no BatchNorm outside its blocks
    assert [_layer(m) for m in G.out] == [("bn", w), ("relu",), ("conv", w, 3, 3, 1, 1), ("tanh",)]
    assert _layer(D.conv_in) == ("conv", 3, w, 3, 1, 1)
    assert len(_convs(G, nn.BatchNorm2d)) == 4 * 2 + 1 and len(_convs(D, nn.BatchNorm2d)) == 4 * 2


@pytest.mark.parametrize("resample,cin,cout", [("up", 3, 5), ("down", 3, 5), ("up", 4, 4), ("down", 4, 4)])
def test_resnet_residual_block_shapes_and_formula(resample, cin, cout):
    """Each block is Gulrajani's pre-activation ResidualBlock: up: conv3x3(cout->cout)(ReLU(BN(conv3x3(cin->cout)
    (up(ReLU(BN(x))))))) + conv1x1(up(x)); down: pool(conv3x3(cin->cout)(ReLU(BN(conv3x3(cin->cin)(ReLU(BN(x)))))))
    + conv1x1(pool(x)); up = depth_to_space of four copies (nearest neighbour), pool = the mean of each 2x2 window."""
    import torch.nn.functional as F

    from fastgan.models import ResidualBlock

    torch.manual_seed(0)
    blk = ResidualBlock(cin, cout, resample).double()
    for m in blk.modules():  # non-trivial affine BatchNorm parameters
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.3), nn.init.normal_(m.bias, 0.0, 0.3)
    x = torch.randn(3, cin, 6, 6, dtype=torch.float64)
    y = blk(x)
    assert y.shape == ((3, cout, 12, 12) if resample == "up" else (3, cout, 3, 3))
    mid = cout if resample == "up" else cin
    assert [_layer(m) for m in (blk.conv1, blk.conv2, blk.shortcut)] == [
        ("conv", cin, mid, 3, 1, 1), ("conv", mid, cout, 3, 1, 1), ("conv", cin, cout, 1, 1, 0)]
    assert blk.conv1.bias is None and blk.conv2.bias is not None and blk.shortcut.bias is not None

    def depth_to_space_of_copies(t):  # Gulrajani's UpsampleConv: concat 4 copies, NHWC depth_to_space(2)
        n, c, h, w = t.shape
        nhwc = torch.cat([t] * 4, dim=1).permute(0, 2, 3, 1)  # (n, h, w, 4c): channel (i*2 + j)*c + k
        return nhwc.reshape(n, h, w, 2, 2, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, 2 * h, 2 * w)

    def mean_pool(t):  # Gulrajani's add_n of the four strided slices / 4
        return (t[:, :, ::2, ::2] + t[:, :, 1::2, ::2] + t[:, :, ::2, 1::2] + t[:, :, 1::2, 1::2]) / 4

    def bn_relu(bn, t):
        return F.relu(F.batch_norm(t, None, None, bn.weight, bn.bias, training=True, eps=bn.eps))

    h = bn_relu(blk.bn1, x)
    if resample == "up":
        want = F.conv2d(depth_to_space_of_copies(x), blk.shortcut.weight, blk.shortcut.bias)
        h = F.conv2d(depth_to_space_of_copies(h), blk.conv1.weight, None, padding=1)
        want = want + F.conv2d(bn_relu(blk.bn2, h), blk.conv2.weight, blk.conv2.bias, padding=1)
    else:
        want = F.conv2d(mean_pool(x), blk.shortcut.weight, blk.shortcut.bias)
        h = F.conv2d(h, blk.conv1.weight, None, padding=1)
        want = want + mean_pool(F.conv2d(bn_relu(blk.bn2, h), blk.conv2.weight, blk.conv2.bias, padding=1))
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


def _hand_count_resnet(width, c, side, latent, batchnorm=True):
    """Parameters of Gulrajani's ResNet counted from the block structure (not from the modules)."""
    def bn(n):
        return 2 * n if batchnorm else 0

    def conv(cin, cout, k, bias=True):
        return cin * cout * k * k + (cout if bias else 0)

    def up(cin, cout):  # BN(cin) conv3x3 cin->cout (bias only without BN) BN(cout) conv3x3 cout->cout, shortcut 1x1
        return bn(cin) + conv(cin, cout, 3, not batchnorm) + bn(cout) + conv(cout, cout, 3) + conv(cin, cout, 1)

    def down(cin, cout):  # BN(cin) conv3x3 cin->cin BN(cin) conv3x3 cin->cout, shortcut 1x1
        return bn(cin) + conv(cin, cin, 3, not batchnorm) + bn(cin) + conv(cin, cout, 3) + conv(cin, cout, 1)

    s, w = side // 16, width
    g = (latent * 8 * w * s * s + 8 * w * s * s) + up(8 * w, 8 * w) + up(8 * w, 4 * w) + up(4 * w, 2 * w) \
        + up(2 * w, w) + bn(w) + conv(w, c, 3)
    d = conv(c, w, 3) + down(w, 2 * w) + down(2 * w, 4 * w) + down(4 * w, 8 * w) + down(8 * w, 8 * w) \
        + (8 * w * s * s + 1)
    return g, d


@pytest.mark.parametrize("width,shape,batchnorm", [(64, (3, 64, 64), True), (64, (3, 32, 32), True),
                                                   (5, (1, 16, 16), True), (3, (3, 32, 32), False)])
def test_resnet_parameter_count_matches_a_count_by_hand(width, shape, batchnorm):
    cfg = ModelConfig(arch="resnet", resnet_width=width, latent_dim=128, g_batchnorm=batchnorm, d_batchnorm=batchnorm)
    G, D = build_generator(cfg, shape), build_discriminator(cfg, shape)
    g, d = _hand_count_resnet(width, shape[0], shape[1], 128, batchnorm)
    assert (sum(p.numel() for p in G.parameters()), sum(p.numel() for p in D.parameters())) == (g, d)
    if (width, shape, batchnorm) == (64, (3, 64, 64), True):
        assert (g, d) == (8_540_483, 7_491_841)  # Gulrajani's dim = 64 at 64x64 (Roth et al.'s LSUN / CelebA runs)


def test_resnet_gradients_reach_every_parameter():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="resnet", resnet_width=2, latent_dim=8)
    G, D = build_generator(cfg, (3, 32, 32)), build_discriminator(cfg, (3, 32, 32))
    x_real = torch.rand(4, 3, 32, 32) * 2 - 1
    loss = nn.functional.softplus(-D(x_real)).mean() + nn.functional.softplus(D(G(G.sample_latent(4)))).mean()
    loss.backward()
    for name, p in [*G.named_parameters(prefix="G"), *D.named_parameters(prefix="D")]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_resnet_paper_init_is_tflibs():
    """model.init=paper: tflib's uniform init, std sqrt(4 / (fan_in + fan_out)) for the blocks' convs and G's output
    conv (he_init), sqrt(2 / (fan_in + fan_out)) for the shortcuts, D's input conv and the linear layers; zero
    biases; BatchNorm scale 1, offset 0."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="resnet", resnet_width=16)
    G, D = build_generator(cfg, (3, 32, 32)), build_discriminator(cfg, (3, 32, 32))

    def check(w, std):
        bound = std * 3 ** 0.5
        assert w.abs().max() <= bound * (1 + 1e-6) and w.abs().max() > 0.9 * bound
        assert abs(w.std().item() - std) < 0.15 * std

    def conv_std(m, he):
        k = m.kernel_size[0] * m.kernel_size[1]
        return ((4.0 if he else 2.0) / (m.in_channels * k + m.out_channels * k)) ** 0.5

    for blk in _blocks(G) + _blocks(D):
        check(blk.conv1.weight, conv_std(blk.conv1, True))
        check(blk.conv2.weight, conv_std(blk.conv2, True))
        check(blk.shortcut.weight, conv_std(blk.shortcut, False))
    check(G.out[2].weight, conv_std(G.out[2], True))
    check(D.conv_in.weight, conv_std(D.conv_in, False))
    for lin in (G.fc, D.out):
        check(lin.weight, (2.0 / (lin.in_features + lin.out_features)) ** 0.5)
    for m in [*G.modules(), *D.modules()]:
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            assert (m.bias == 0).all()
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()
    torch.manual_seed(0)
    plain = build_generator(ModelConfig(arch="resnet", resnet_width=16, init="torch"), (3, 32, 32))
    assert not torch.equal(plain.fc.weight, G.fc.weight)  # PyTorch's default init instead


def test_resnet_batchnorm_switches_and_spectral_norm():
    cfg = ModelConfig(arch="resnet", resnet_width=2, g_batchnorm=False, d_batchnorm=False, spectral_norm=True)
    G, D = build_generator(cfg, (3, 16, 16)), build_discriminator(cfg, (3, 16, 16))
    assert not _convs(G, nn.BatchNorm2d) and not _convs(D, nn.BatchNorm2d)
    assert all(blk.conv1.bias is not None for blk in _blocks(G) + _blocks(D))  # no BatchNorm offset to stand in
    layers = _convs(D, (nn.Conv2d, nn.Linear))
    assert len(layers) == 1 + 4 * 3 + 1 and all(parametrize.is_parametrized(m, "weight") for m in layers)
    assert not any(parametrize.is_parametrized(m, "weight") for m in _convs(G, (nn.Conv2d, nn.Linear)))
    assert D(G(torch.randn(2, 128))).shape == (2,)


@pytest.mark.parametrize("width", [8, 12, 64])
def test_resnet_noise_generator_is_gs_architecture_with_channels_over_8(width):
    shape = (3, 32, 32)
    cfg = ModelConfig(arch="resnet", resnet_width=width)
    G, N = build_generator(cfg, shape), build_noise_generator(cfg, shape)
    assert G.channels == (8 * width, 8 * width, 4 * width, 2 * width, width)
    assert N.channels == tuple(max(1, c // 8) for c in G.channels)  # each of G's counts divided, not the width
    assert isinstance(N.out[-1], ScaledTanh) and N.out[-1].scale == 2.0 and N.latent_dim == G.latent_dim
    assert N(N.sample_latent(2)).shape == (2, *shape)


@pytest.mark.parametrize("shape", [(3, 28, 28), (3, 48, 48), (3, 64, 32), (3, 8, 8), (1, 1, 1), (3,), (12,)])
def test_resnet_refuses_sizes_its_resamplings_do_not_fit(shape):
    from fastgan.models.resnet import ResNetDiscriminator, ResNetGenerator

    cfg = ModelConfig(arch="resnet", resnet_width=2)
    for build in (build_generator, build_discriminator, build_noise_generator):
        with pytest.raises(ValueError, match=r"^data_shape: arch 'resnet' needs square images whose side is a power "
                                             rf"of two >= 16 .*got {re.escape(str(tuple(shape)))}"):
            build(cfg, shape)
    with pytest.raises(ValueError, match=r"^data_shape: arch 'resnet'"):
        ResNetGenerator(8, shape)
    with pytest.raises(ValueError, match=r"^data_shape: arch 'resnet'"):
        ResNetDiscriminator(shape)
    with pytest.raises(ValueError, match=r"^channels: 5 positive channel counts"):
        ResNetGenerator(8, (3, 16, 16), channels=[4, 4, 4, 4])
