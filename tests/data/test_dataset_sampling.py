import dataclasses

import numpy as np
import pytest
import torch

from fastgan.data import DATASETS, DataConfig, TensorDataset, build_dataset


def test_sample_reproducible_and_drawn_from_stored():
    data = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1) * 10
    ds = TensorDataset(data, "images", "cpu", scale=1 / 127.5, offset=-1.0)
    a = ds.sample(50, torch.Generator().manual_seed(3))
    b = ds.sample(50, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # exactly the stored values, indexed with torch.randint on the same generator
    idx = torch.randint(20, (50,), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, data[idx].float() / 127.5 - 1)
    assert ds.on_device and ds.storage_device == torch.device("cpu")


def test_float_storage_is_not_modified_by_sampling():
    data = torch.rand(6, 1, 2, 2)
    ds = TensorDataset(data.clone(), "images", "cpu", scale=2.0, offset=-1.0)
    first = torch.cat(list(ds.batches(4)))
    second = torch.cat(list(ds.batches(4)))
    assert torch.equal(first, second) and torch.allclose(first, data * 2 - 1)


def test_errors():
    with pytest.raises(ValueError, match="kind"):
        TensorDataset(torch.zeros(2, 3), "voxels", "cpu")
    with pytest.raises(ValueError, match="non-empty"):
        TensorDataset(torch.zeros(0, 3), "points", "cpu")
    ds = TensorDataset(torch.zeros(2, 3), "points", "cpu")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            ds.sample(bad)
    with pytest.raises(TypeError, match="cfg"):
        build_dataset({"name": "roth3d"})


def test_config_metadata_and_validation():
    fields = {f.name: f for f in dataclasses.fields(DataConfig)}
    assert fields["name"].metadata["choices"] == DATASETS
    assert set(DATASETS) >= {"roth3d", "ring8", "grid25", "mnist", "fashion_mnist", "cifar10", "image_folder", "npz"}
    assert fields["keep_on_device"].metadata["choices"] == ("auto", "yes", "no")
    assert fields["nominal_size"].metadata["min"] == 1
    for f in fields.values():  # every field has a default
        assert f.default is not dataclasses.MISSING
    with pytest.raises(ValueError, match="data.path"):
        DataConfig(name="cifar10")
    DataConfig(name="fashion_mnist")  # has a default path
    with pytest.raises(ValueError, match="data.value_range"):
        DataConfig(name="npz", path="x.npz", value_range=(1.0, 0.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        DataConfig().name = "ring8"


@pytest.mark.cuda
def test_file_data_kept_on_cuda_and_sampled_there(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(4 * 16, dtype=np.uint8).reshape(4, 4, 4))
    ds = build_dataset(DataConfig(name="npz", path=str(tmp_path / "a.npz")), device="cuda")
    assert ds.on_device and ds.storage_device.type == "cuda"
    x = ds.sample(8, torch.Generator(device="cuda").manual_seed(0))
    assert x.is_cuda and x.dtype == torch.float32
    host = build_dataset(DataConfig(name="npz", path=str(tmp_path / "a.npz"), keep_on_device="no"), device="cuda")
    assert not host.on_device and host.storage_device.type == "cpu"
    assert host.sample(8, torch.Generator().manual_seed(0)).is_cuda


def test_import_is_lean():
    import subprocess
    import sys

    code = ("import sys, torch, fastgan.data, fastgan.models\n"
            "from fastgan.data import DataConfig, build_dataset\n"
            "build_dataset(DataConfig()).sample(4)\n"
            "assert not torch.cuda.is_initialized(), 'CUDA initialised'\n"
            "assert 'triton' not in sys.modules and 'PIL' not in sys.modules, 'heavy import'\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
