import dataclasses

import pytest
import torch
from torch import nn

from fastgan.models import (ARCHS, Denoiser, ModelConfig, build_denoiser, build_denoiser_from_config,
                            build_discriminator, build_generator, build_noise_generator)


@pytest.mark.parametrize("arch,shape", [("mlp", (3,)), ("goodfellow", (1, 28, 28)), ("dcgan", (3, 32, 32))])
def test_noise_generator_bound_and_shape(arch, shape):
    torch.manual_seed(0)
    N = build_noise_generator(ModelConfig(arch=arch), shape)
    eps = N(100 * N.sample_latent(16))  # large inputs drive the output towards saturation
    assert eps.shape == (16, *shape)
    assert eps.abs().max() <= 2.0
    # the bound is 2, not 1: push the pre-activation far and see values beyond tanh's range
    with torch.no_grad():
        last = [m for m in N.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d))][-1]
        last.bias.fill_(5.0)
    eps = N(N.sample_latent(4))
    assert eps.min() > 1.9 and eps.max() <= 2.0


def test_noise_generator_widths_divided_by_8():
    N = build_noise_generator(ModelConfig(arch="dcgan"), (3, 32, 32))
    assert N.fc.out_features == 4 * 4 * 64  # M / 8
    assert [m.out_channels for m in N.modules() if isinstance(m, nn.ConvTranspose2d)] == [32, 16, 8, 3]
    N = build_noise_generator(ModelConfig(arch="mlp"), (3,))
    assert [m.out_features for m in N.modules() if isinstance(m, nn.Linear)] == [16, 16, 3]
    N = build_noise_generator(ModelConfig(arch="goodfellow"), (1, 28, 28))
    assert [m.out_features for m in N.modules() if isinstance(m, nn.Linear)] == [150, 150, 784]
    N = build_noise_generator(ModelConfig(arch="mlp", noise_width_divisor=4, noise_output_scale=0.5), (3,))
    assert [m.out_features for m in N.modules() if isinstance(m, nn.Linear)][0] == 32
    assert N(100 * N.sample_latent(8)).abs().max() <= 0.5


def test_denoiser_structure():
    D = build_denoiser(32, depth=3)
    mods = list(D.net)
    lin = [m for m in mods if isinstance(m, nn.Linear)]
    bns = [m for m in mods if isinstance(m, nn.BatchNorm1d)]
    assert len(lin) == 4 and len(bns) == 3
    assert all(m.out_features >= 32 for m in lin[:-1]) and lin[-1].out_features == 32
    assert isinstance(mods[-1], nn.Linear)  # output: no BatchNorm, no activation
    for i, m in enumerate(mods[:-1]):  # every hidden Linear is followed by BatchNorm then ReLU
        if isinstance(m, nn.Linear):
            assert isinstance(mods[i + 1], nn.BatchNorm1d) and isinstance(mods[i + 2], nn.ReLU)
    h = torch.randn(5, 32)
    assert D(h).shape == (5, 32)
    assert build_denoiser(32, hidden=64, depth=1).hidden == 64
    with pytest.raises(ValueError, match="hidden"):
        build_denoiser(32, hidden=16)
    with pytest.raises(ValueError, match="depth"):
        build_denoiser(32, depth=0)
    with pytest.raises(ValueError, match="h"):
        D(torch.randn(5, 31))


def test_denoiser_on_discriminator_features():
    cfg = ModelConfig(arch="dcgan", dcgan_width=4, denoiser_depth=2)
    Dnet = build_discriminator(cfg, (3, 16, 16))
    r = build_denoiser_from_config(cfg, Dnet.feature_dim)
    assert isinstance(r, Denoiser) and r.hidden == Dnet.feature_dim and r.depth == 2
    _, h = Dnet.forward_features(torch.randn(4, 3, 16, 16))
    assert r(h).shape == h.shape
    with pytest.raises(ValueError, match="hidden"):
        build_denoiser_from_config(ModelConfig(denoiser_hidden=3), 8)


def test_config_metadata_and_hooks():
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    assert fields["arch"].metadata["choices"] == ARCHS == ("mlp", "goodfellow", "dcgan", "resnet")
    assert fields["latent_dist"].metadata["choices"] == ("normal", "uniform")
    assert fields["init"].metadata["choices"] == ("paper", "torch")
    assert fields["mlp_activation"].metadata["choices"] == ("tanh", "relu", "leaky_relu")
    assert fields["latent_dim"].metadata["min"] == 1 and fields["d_dropout"].metadata["max"] < 1
    for f in fields.values():
        assert f.default is not dataclasses.MISSING
    with pytest.raises(ValueError, match="model.g_hidden"):
        ModelConfig(g_hidden=(128, 0))
    with pytest.raises(ValueError, match="model.d_hidden"):
        ModelConfig(d_hidden=())
    with pytest.raises(ValueError, match="model.g_hidden"):
        ModelConfig(arch="dcgan", g_hidden=(8,))
    assert ModelConfig(g_hidden=[4, 4]).g_hidden == (4, 4)  # YAML lists become tuples
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelConfig().arch = "dcgan"


def test_sample_latent():
    G = build_generator(ModelConfig(latent_dist="uniform", latent_dim=3), (2,))
    z = G.sample_latent(4000, torch.Generator().manual_seed(0))
    assert z.shape == (4000, 3) and z.min() >= -1 and z.max() <= 1 and z.min() < -0.99
    a = build_generator(ModelConfig(), (2,)).sample_latent(8, torch.Generator().manual_seed(1))
    b = build_generator(ModelConfig(), (2,)).sample_latent(8, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and abs(a.std().item() - 1) < 0.6


def test_noise_generator_keeps_g_batchnorm_and_hidden_activation():
    # "equivalent to the generator architecture with the number of filters reduced by a factor of eight"
    for cfg, shape in ((ModelConfig(arch="dcgan", dcgan_width=8), (1, 16, 16)),
                       (ModelConfig(arch="resnet", resnet_width=8), (1, 16, 16)),
                       (ModelConfig(arch="mlp", g_batchnorm=True, mlp_activation="relu"), (3,)),
                       (ModelConfig(arch="goodfellow", g_batchnorm=True), (2,))):
        G, N = build_generator(cfg, shape), build_noise_generator(cfg, shape)
        kinds = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.Tanh, nn.LeakyReLU)
        g_layers = [type(m) for m in G.modules() if isinstance(m, kinds)]
        n_layers = [type(m) for m in N.modules() if isinstance(m, kinds)]
        assert n_layers == g_layers[:-1] if g_layers[-1] is nn.Tanh else n_layers == g_layers, (cfg.arch, n_layers)
        assert any(issubclass(k, (nn.BatchNorm1d, nn.BatchNorm2d)) for k in n_layers)


def test_noise_generator_draws_from_gs_latent_prior():
    cfg = ModelConfig(arch="mlp", latent_dist="uniform")
    N = build_noise_generator(cfg, (3,))
    assert N.latent_dist == build_generator(cfg, (3,)).latent_dist == "uniform"
    z = N.sample_latent(4096, torch.Generator().manual_seed(0))
    assert z.min() >= -1 and z.max() <= 1 and z.std() < 0.7  # uniform on [-1, 1]: std 1/sqrt(3)


def test_denoiser_default_width_is_the_feature_width():
    # model.denoiser_hidden: "None: = feature width"; model.denoiser_depth default 3
    D = build_denoiser(24)
    assert [m.out_features for m in D.net if isinstance(m, nn.Linear)] == [24, 24, 24, 24]
    D = build_denoiser_from_config(ModelConfig(), 24)
    assert D.hidden == 24 and D.depth == 3
    assert [m.out_features for m in D.net if isinstance(m, nn.Linear)] == [24, 24, 24, 24]
