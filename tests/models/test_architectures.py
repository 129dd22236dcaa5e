"""Output shapes and the published layer structure of every architecture."""
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
