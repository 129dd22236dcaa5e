"""model.g_output_bias='marginals': G's output bias from the training data's per-feature means (Goodfellow et al.'s
init_sigmoid_bias_from_marginals), on the model, the data sets and through the trainer."""
import numpy as np
import pytest
import torch

import fastgan
from fastgan import checkpoint as ckpt
from fastgan.data import DataConfig, TensorDataset, build_dataset
from fastgan.models import ModelConfig, build_generator


def _output_at_zero_weights(G, n=3):
    with torch.no_grad():
        G.net[-2].weight.zero_()
        return G(G.sample_latent(n))


@pytest.mark.parametrize("arch, shape", [("goodfellow", (1, 4, 4)), ("mlp", (1, 4, 4)), ("mlp", (3,))])
def test_a_zero_input_to_the_output_layer_gives_the_data_mean(arch, shape):
    G = build_generator(ModelConfig(arch=arch, g_hidden=(8,), g_output_bias="marginals"), shape)
    mean = torch.rand(shape, dtype=torch.float64) * 1.8 - 0.9
    G.init_output_bias(mean)
    out = _output_at_zero_weights(G)
    assert torch.allclose(out, mean.float().expand_as(out), atol=1e-6)
    if len(shape) == 1:  # points: a linear output, the bias is the mean itself
        assert torch.equal(G.net[-2].bias, mean.float())


def test_means_at_the_bounds_of_tanh_are_clipped_as_pylearn2_clips_probabilities():
    G = build_generator(ModelConfig(arch="goodfellow", g_hidden=(8,)), (1, 1, 3))
    G.init_output_bias(torch.tensor([[[-1.0, 1.0, 0.0]]], dtype=torch.float64))
    b = G.net[-2].bias
    # pylearn2: logit(clip(p, 1e-7, 1 - 1e-7)) for sigmoid(a) on [0, 1]; tanh on [-1, 1] is sigmoid(2a) rescaled
    expected = 0.5 * np.log((1 - 1e-7) / 1e-7)
    assert torch.allclose(b, torch.tensor([-expected, expected, 0.0], dtype=torch.float32), rtol=1e-5)
    assert torch.isfinite(_output_at_zero_weights(G)).all()


def test_bad_means_are_refused_naming_the_argument():
    G = build_generator(ModelConfig(arch="mlp"), (3,))
    with pytest.raises(ValueError, match=r"^mean: expected shape \(3,\)"):
        G.init_output_bias(torch.zeros(4))
    with pytest.raises(ValueError, match="^mean: holds non-finite"):
        G.init_output_bias(torch.tensor([0.0, float("nan"), 0.0]))
    with pytest.raises(TypeError, match="^mean: expected a tensor"):
        G.init_output_bias([0.0, 0.0, 0.0])


def test_the_field_is_refused_where_g_has_no_per_feature_output_layer():
    with pytest.raises(ValueError, match=r"^model\.g_output_bias: only used by arch 'mlp' / 'goodfellow'"):
        ModelConfig(arch="dcgan", g_output_bias="marginals")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_a_stored_sets_feature_mean_is_the_mean_of_its_samples_as_returned(dtype):
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (9000, 1, 2, 3), generator=g, dtype=torch.uint8)  # > one 4096-row chunk
    data = raw if dtype == torch.uint8 else raw.float() / 255
    ds = TensorDataset(data, "images", "cpu", scale=2 / 255 if dtype == torch.uint8 else 2.0, offset=-1.0)
    expected = torch.cat(list(ds.batches(1000))).double().mean(0)
    mean = ds.feature_mean()
    assert mean.dtype == torch.float64 and mean.shape == (1, 2, 3)
    assert torch.allclose(mean, expected, atol=1e-6)
    head, _ = ds.hold_out(1000)  # the training view's mean leaves the held-out samples out
    assert torch.allclose(head.feature_mean(), torch.cat(list(head.batches(1000))).double().mean(0), atol=1e-6)
    assert not torch.allclose(head.feature_mean(), mean, atol=1e-9)


def test_a_mixtures_feature_mean_is_its_distributions_mean():
    ds = build_dataset(DataConfig(name="roth3d"))
    x = ds.sample(200_000, torch.Generator().manual_seed(0)).double()
    assert torch.allclose(ds.feature_mean(), x.mean(0), atol=3e-3)  # 7 equal modes: sampling error ~1.6e-3
    assert torch.allclose(ds.feature_mean(), torch.full((3,), 3 ** -0.5, dtype=torch.float64), atol=1e-12)


def _train(tmp_path, *extra, steps=1, resume=False):
    return fastgan.train(None, overrides=[
        "data.name=npz", f"data.path={tmp_path / 'x.npz'}", "data.holdout=8", "model.arch=goodfellow",
        "model.g_hidden=[8]", "model.d_hidden=[8]", "model.maxout_pieces=2", "optim.optimizer=sgd",
        "optim.momentum=0", "optim.lr_g=1e-30", "optim.batch_size=8", f"run.steps={steps}",
        f"run.dir={tmp_path / 'run'}", "run.sample_every=0", "run.progress=off", "run.tensorboard=false", *extra],
        resume=resume)


def _g_bias(result):
    return ckpt.load(result.out_dir / "checkpoints/last.pt")["method"]["modules"]["G"]["net.2.bias"]


def test_the_trainer_sets_it_from_the_training_split_at_a_fresh_start_only(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 200, size=(40, 1, 2, 2), dtype=np.uint8)
    a[-8:] = 255  # the held-out tail: its values would move the mean if it were counted
    np.savez(tmp_path / "x.npz", x=a)
    r = _train(tmp_path, "model.g_output_bias=marginals")
    mean = torch.from_numpy(a[:-8]).double().mean(0) / 127.5 - 1  # 0-255 mapped to [-1, 1]
    # lr_g = 1e-30 moves no float32 bias of this size: what is stored is the init
    assert torch.allclose(_g_bias(r).double(), torch.atanh(mean).flatten(), atol=1e-6)

    from fastgan.models.mlp import MLPGenerator

    calls = []
    monkeypatch.setattr(MLPGenerator, "init_output_bias", lambda self, m: calls.append(m))
    resumed = _train(tmp_path, "model.g_output_bias=marginals", steps=2, resume=True)
    assert resumed.step == 2 and calls == []  # a resume continues from the checkpoint's G


def test_by_default_the_output_bias_starts_at_zero(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).integers(0, 200, size=(40, 1, 2, 2), dtype=np.uint8))
    assert _g_bias(_train(tmp_path)).abs().max() < 1e-20  # (lr_g = 1e-30 moves a zero bias a little)
