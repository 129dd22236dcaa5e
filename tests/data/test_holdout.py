"""data.holdout: the last N stored samples form a validation set that training never draws from."""
import numpy as np
import pytest
import torch

from fastgan.config import ConfigError
from fastgan.data import DataConfig, build_dataset


def _npz(tmp_path, n=10):
    # every sample's pixels hold its index, so a drawn batch says which samples it came from
    a = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None], 4, axis=2).repeat(4, axis=3)
    path = tmp_path / "x.npz"
    np.savez(path, x=a)
    return path


def test_holdout_splits_off_the_tail(tmp_path):
    path = _npz(tmp_path)
    ds = build_dataset(DataConfig(name="npz", path=str(path), holdout=3))
    assert len(ds) == 7 and len(ds.held_out) == 3
    held = torch.cat(list(ds.held_out.batches(2)))
    whole = build_dataset(DataConfig(name="npz", path=str(path)))
    assert whole.held_out is None
    torch.testing.assert_close(held, torch.cat(list(whole.batches(16)))[7:], rtol=0, atol=0)
    drawn = ds.sample(4000, torch.Generator().manual_seed(0))
    index = torch.round((drawn[:, 0, 0, 0] + 1) * 255 / 2).long()
    assert index.max().item() == 6 and index.min().item() == 0  # every training sample, no held-out one
    assert ds.held_out.shape == ds.shape and ds.held_out.kind == "images"


def test_holdout_after_max_samples(tmp_path):
    ds = build_dataset(DataConfig(name="npz", path=str(_npz(tmp_path)), max_samples=6, holdout=2))
    held = torch.cat(list(ds.held_out.batches(8)))
    assert len(ds) == 4 and torch.round((held[:, 0, 0, 0] + 1) * 255 / 2).tolist() == [4, 5]


@pytest.mark.parametrize("n", [10, 11])
def test_holdout_must_leave_samples_to_train_on(tmp_path, n):
    path = _npz(tmp_path)
    # a ConfigError: the CLI's exit 2 for a config that does not fit the loaded data
    with pytest.raises(ConfigError, match=r"data\.holdout: must be an int in \[0, 9\].*10 samples"):
        build_dataset(DataConfig(name="npz", path=str(path), holdout=n))


def test_hold_out_of_none_keeps_every_sample(tmp_path):
    """The range the message gives starts at 0 (data.holdout's default): hold_out(0) is everything and nothing
    held out, not the empty [:-0] slice."""
    ds = build_dataset(DataConfig(name="npz", path=str(_npz(tmp_path))))
    head, tail = ds.hold_out(0)
    assert len(head) == 10 and len(tail) == 0
    head, tail = ds.hold_out(9)
    assert len(head) == 1 and len(tail) == 9


def test_holdout_refused_for_mixtures():
    with pytest.raises(ValueError, match=r"data\.holdout: the built-in mixture 'ring8'"):
        DataConfig(name="ring8", holdout=5)


def test_holdout_negative_is_a_config_error():
    from fastgan import config as C

    with pytest.raises(ConfigError, match=r"data\.holdout"):
        C.coerce(None, ["data.holdout=-1"])
