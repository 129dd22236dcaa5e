"""Output shapes and the published layer structure of every architecture."""
from pathlib import Path

import pytest
import torch
from torch import nn

from fastgan.config import ConfigError
from fastgan.models import (Maxout, ModelConfig, build_discriminator, build_generator, build_noise_generator)

CASES = [
    ("mlp", (3,)), ("mlp", (2,)), ("mlp", (1, 28, 28)),
    ("goodfellow", (1, 28, 28)), ("goodfellow", (2,)),
    ("dcgan", (3, 32, 32)), ("dcgan", (1, 28, 28)),
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
    for arch, shape in (("mlp", (3,)), ("dcgan", (3, 32, 32))):
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
