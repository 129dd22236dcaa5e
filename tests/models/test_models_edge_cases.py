"""The public model constructors given what a user may write by hand: a ModelConfig built in Python (not through
fastgan.config, which validates), odd data shapes, odd latent batch sizes."""
import pytest
import torch

from fastgan.config import ConfigError
from fastgan.models import (ModelConfig, build_discriminator, build_generator, build_noise_generator)

BUILDERS = [build_generator, build_discriminator, build_noise_generator]


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("fields,message", [
    (dict(arch="vgg"), r"model\.arch: must be one of \('mlp', 'goodfellow', 'dcgan', 'resnet'\), got 'vgg'"),
    (dict(arch="DCGAN"), r"model\.arch: must be one of"),
    (dict(latent_dim=0), r"model\.latent_dim: must be >= 1, got 0"),
    (dict(latent_dim="2"), r"model\.latent_dim: must be an integer, got '2'"),
    (dict(latent_dist="cauchy"), r"model\.latent_dist: must be one of \('normal', 'uniform'\)"),
    (dict(init="xavier"), r"model\.init: must be one of \('paper', 'torch'\)"),
    (dict(arch="dcgan", dcgan_width=0), r"model\.dcgan_width: must be >= 1, got 0"),
    (dict(arch="goodfellow", maxout_pieces=0), r"model\.maxout_pieces: must be >= 1, got 0"),
    (dict(noise_width_divisor=0), r"model\.noise_width_divisor: must be >= 1, got 0"),
    (dict(noise_output_scale=-1.0), r"model\.noise_output_scale: must be in \[0\.0, 3\.40\d+e\+38\]"),
    (dict(noise_output_scale=1e39), r"model\.noise_output_scale: must be in \[0\.0, 3\.40\d+e\+38\]"),
    (dict(arch="goodfellow", d_dropout=2.0), r"model\.d_dropout: must be in \[0\.0, 0\.99\]"),
])
def test_builders_validate_a_hand_made_model_config(build, fields, message):
    shape = (1, 8, 8) if fields.get("arch") == "dcgan" else (3,)
    with pytest.raises(ConfigError, match=message):
        build(ModelConfig(**fields), shape)


@pytest.mark.parametrize("shape", [(3.5,), ("3",), (1, 8.0, 8), (True,)])
def test_data_shape_must_hold_integers(shape):
    with pytest.raises(ValueError, match=r"data_shape: expected a tuple of ints"):
        build_generator(ModelConfig(), shape)


def test_data_shape_takes_integer_types():
    import numpy as np

    assert build_generator(ModelConfig(), torch.Size([3])).data_shape == (3,)
    assert build_discriminator(ModelConfig(), (np.int64(1), 4, 4)).data_shape == (1, 4, 4)


@pytest.mark.parametrize("n", [-1, 2.0, "2", None])
def test_sample_latent_batch_size(n):
    G = build_generator(ModelConfig(), (3,))
    with pytest.raises((ValueError, TypeError), match=r"batch_size: must be an int >= 0"):
        G.sample_latent(n)
    assert G.sample_latent(0).shape == (0, 2)
    assert G.sample_latent(torch.tensor(4)).shape == (4, 2)
