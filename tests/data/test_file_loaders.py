"""Every file loader on small files the test writes itself."""
import gzip
import os
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch

from fastgan.data import DataConfig, build_dataset
from fastgan.data.idx import FASHION_MNIST_DIR, parse_idx


def idx_bytes(a: np.ndarray) -> bytes:
    assert a.dtype == np.uint8
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def all_samples(ds) -> torch.Tensor:
    return torch.cat(list(ds.batches(7)))


def expected_pixels(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8.astype(np.float64) / 127.5 - 1.0).float()


def check_images(ds, u8):
    x = all_samples(ds)
    assert ds.kind == "images" and ds.shape == u8.shape[1:] and len(ds) == u8.shape[0]
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x, expected_pixels(u8), atol=1e-6)
    b = ds.sample(5, torch.Generator().manual_seed(0))
    assert b.shape == (5, *u8.shape[1:]) and b.dtype == torch.float32


@pytest.fixture
def pixels():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(10, 6, 5), dtype=np.uint8)
    a[0, 0, 0], a[0, 0, 1] = 0, 255
    return a


# ---- IDX -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder(tmp_path, pixels, gz):
    test = pixels[:3]
    for name, a in (("train-images-idx3-ubyte", pixels), ("t10k-images-idx3-ubyte", test)):
        data = idx_bytes(a)
        if gz:
            (tmp_path / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (tmp_path / name).write_bytes(data)
    check_images(build_dataset(DataConfig(name="mnist", path=str(tmp_path))), pixels[:, None])
    check_images(build_dataset(DataConfig(name="fashion_mnist", path=str(tmp_path), split="test")), test[:, None])
    ds = build_dataset(DataConfig(name="mnist", path=str(tmp_path), split="all", max_samples=12))
    assert len(ds) == 12


def test_idx_single_file_and_dotted_name(tmp_path, pixels):
    f = tmp_path / "train-images.idx3-ubyte"  # the name some archives unpack to
    f.write_bytes(idx_bytes(pixels))
    check_images(build_dataset(DataConfig(name="mnist", path=str(tmp_path))), pixels[:, None])
    check_images(build_dataset(DataConfig(name="mnist", path=str(f))), pixels[:, None])


def test_idx_errors(tmp_path, pixels):
    good = idx_bytes(pixels)
    bad_magic = tmp_path / "magic"
    bad_magic.write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(ValueError, match=r"magic.*|.*magic") as e:
        build_dataset(DataConfig(name="mnist", path=str(bad_magic)))
    assert str(bad_magic) in str(e.value)
    trunc = tmp_path / "trunc"
    trunc.write_bytes(good[:-7])
    with pytest.raises(ValueError, match="truncated") as e:
        build_dataset(DataConfig(name="mnist", path=str(trunc)))
    assert str(trunc) in str(e.value)
    trailing = tmp_path / "trailing"
    trailing.write_bytes(good + b"xx")
    with pytest.raises(ValueError, match="trailing"):
        build_dataset(DataConfig(name="mnist", path=str(trailing)))
    bad_gz = tmp_path / "bad.gz"
    bad_gz.write_bytes(gzip.compress(good)[:40])
    with pytest.raises(ValueError, match="gzip") as e:
        build_dataset(DataConfig(name="mnist", path=str(bad_gz)))
    assert str(bad_gz) in str(e.value)
    labels = tmp_path / "labels"
    labels.write_bytes(idx_bytes(np.arange(10, dtype=np.uint8)))
    with pytest.raises(ValueError, match="3 dimensions"):
        build_dataset(DataConfig(name="mnist", path=str(labels)))
    with pytest.raises(ValueError, match="header"):
        parse_idx(bytes([0, 0, 8, 3, 0, 0]), "x")


def test_idx_missing(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as e:
        build_dataset(DataConfig(name="mnist", path=str(missing)))
    assert str(missing) in str(e.value)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        build_dataset(DataConfig(name="fashion_mnist", path=str(missing)))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):  # folder without the files
        build_dataset(DataConfig(name="fashion_mnist", path=str(tmp_path)))


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR),
                    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR} (Debian package dataset-fashion-mnist)")
def test_real_fashion_mnist_default_path():
    ds = build_dataset(DataConfig(name="fashion_mnist"))
    assert len(ds) == 60000 and ds.shape == (1, 28, 28)
    # the published Fashion-MNIST training mean is 0.2860 on [0, 1], i.e. -0.428 on [-1, 1]
    mean = torch.cat(list(ds.batches(20000))).mean().item()
    assert abs(mean - (2 * 0.2860 - 1)) < 2e-3
    assert len(build_dataset(DataConfig(name="fashion_mnist", split="test"))) == 10000


# ---- CIFAR-10 --------------------------------------------------------------------------------------------
def write_cifar(folder, n_per_batch=3, protocol=2):
    folder.mkdir()
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        batches[name] = data
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": [0] * n_per_batch, b"data": data}, f,
                        protocol=protocol)
    return batches


@pytest.mark.parametrize("protocol", [2, 4, 5])  # 2: the published files; 5 (numpy's _frombuffer): re-saved ones
def test_cifar_folder(tmp_path, protocol):
    batches = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    train = np.concatenate([batches[f"data_batch_{i}"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    check_images(build_dataset(DataConfig(name="cifar10", path=str(tmp_path))), train)  # parent folder works
    ds = build_dataset(DataConfig(name="cifar10", path=str(tmp_path / "cifar-10-batches-py"), split="test"))
    check_images(ds, batches["test_batch"].reshape(-1, 3, 32, 32))
    # channel-major rows: the first 1024 bytes are the red plane
    assert torch.allclose(all_samples(ds)[0, 0].flatten(), expected_pixels(batches["test_batch"][0, :1024]), atol=1e-6)


def test_cifar_errors(tmp_path):
    folder = tmp_path / "c"
    write_cifar(folder)
    b1 = folder / "data_batch_1"
    b1.write_bytes(b1.read_bytes()[:100])
    with pytest.raises(ValueError) as e:
        build_dataset(DataConfig(name="cifar10", path=str(folder)))
    assert str(b1) in str(e.value)
    with open(b1, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8)}, f)
    with pytest.raises(ValueError, match="3072"):
        build_dataset(DataConfig(name="cifar10", path=str(folder)))
    with open(b1, "wb") as f:
        pickle.dump({b"data": os.getcwd}, f)  # a pickle that would call into os
    with pytest.raises(ValueError, match="refusing"):
        build_dataset(DataConfig(name="cifar10", path=str(folder)))
    os.remove(folder / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        build_dataset(DataConfig(name="cifar10", path=str(folder)))
    with pytest.raises(FileNotFoundError, match="nothere"):
        build_dataset(DataConfig(name="cifar10", path=str(tmp_path / "nothere")))


def py2_cifar_batch(data: np.ndarray) -> bytes:
    """A batch pickled as the published files are (Python 2's cPickle, protocol 2): str, and so the dtype's name
    'u1' and byte order '|', load as bytes; numpy's dtype is rebuilt from dtype('u1', 0, 1) and an 8-tuple state."""
    n, raw = data.shape[0], data.tobytes()
    return (b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03K\x00"
            b"\x85q\x04U\x01bq\x05\x87q\x06Rq\x07(K\x01K" + bytes([n]) + b"M\x00\x0c\x86q\x08cnumpy\ndtype\nq\tU\x02u1q\n"
            b"K\x00K\x01\x87q\x0bRq\x0c(K\x03U\x01|q\rNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x0eb\x89T"
            + struct.pack("<I", len(raw)) + raw + b"q\x0ftq\x10bU\x06labelsq\x11]q\x12(" + b"K\x01" * n + b"eu.")


def test_cifar_batch_pickled_by_python2_as_published(tmp_path):
    from fastgan.data.cifar import read_batch

    data = np.random.default_rng(3).integers(0, 256, (4, 3072), dtype=np.uint8)
    (tmp_path / "b").write_bytes(py2_cifar_batch(data))
    assert np.array_equal(read_batch(tmp_path / "b"), data.reshape(-1, 3, 32, 32))


@pytest.mark.parametrize("flip", ["dtype-state", "fortran-flag", "shape"])
def test_cifar_batch_with_a_flipped_byte_is_an_error_not_a_crash(tmp_path, flip):
    """numpy's dtype.__setstate__ (C) takes a malformed state unchecked: one byte of a batch changed from N (None)
    to q (BINPUT) left a 6-tuple, and the process died of SIGSEGV while unpickling. Run in a child process, so a
    crash fails this test rather than the session."""
    import subprocess
    import sys

    raw = bytearray(py2_cifar_batch(np.zeros((4, 3072), np.uint8)))
    if flip == "dtype-state":
        raw[raw.index(b"NNN")] = ord("q")  # None, BINPUT 78 (eating the next None), None
    elif flip == "fortran-flag":
        raw[raw.index(b"\x89T")] = ord("K")  # is_fortran: BININT1 84 (the 'T' opcode byte)
    else:
        raw[raw.index(b"M\x00\x0c")] = ord("K")  # the shape's 3072 becomes 0 and a stray byte
    (tmp_path / "b").write_bytes(bytes(raw))
    code = ("import sys; from fastgan.data.cifar import read_batch\n"
            "try:\n    read_batch(sys.argv[1])\nexcept ValueError as e:\n    print('ValueError:', e)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, (r.returncode, r.stderr[-500:])
    assert r.stdout.startswith("ValueError:") and str(tmp_path / "b") in r.stdout


# ---- image folder ----------------------------------------------------------------------------------------
def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    (tmp_path / "sub").mkdir()
    for i, a in enumerate(imgs):
        Image.fromarray(a).save(tmp_path / ("sub" if i % 2 else "") / f"im{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = build_dataset(DataConfig(name="image_folder", path=str(tmp_path)))
    # order: files of the top folder, then of sub/ (sorted walk)
    order = [0, 2, 1, 3]
    check_images(ds, imgs[order].transpose(0, 3, 1, 2))
    gray = build_dataset(DataConfig(name="image_folder", path=str(tmp_path), channels=1))
    assert gray.shape == (1, 8, 8)
    small = build_dataset(DataConfig(name="image_folder", path=str(tmp_path), image_size=4, max_samples=3))
    assert small.shape == (3, 4, 4) and len(small) == 3


def test_image_folder_errors(tmp_path):
    from PIL import Image

    with pytest.raises(ValueError, match="no image files"):
        build_dataset(DataConfig(name="image_folder", path=str(tmp_path)))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match="b.png.*differs"):
        build_dataset(DataConfig(name="image_folder", path=str(tmp_path)))
    assert build_dataset(DataConfig(name="image_folder", path=str(tmp_path), image_size=8)).shape == (1, 8, 8)
    (tmp_path / "c.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="c.png"):
        build_dataset(DataConfig(name="image_folder", path=str(tmp_path), image_size=8))
    with pytest.raises(FileNotFoundError):
        build_dataset(DataConfig(name="image_folder", path=str(tmp_path / "missing")))


# ---- npz -------------------------------------------------------------------------------------------------
def test_npz_layouts(tmp_path, pixels):
    f = tmp_path / "a.npz"
    np.savez(f, images=pixels)
    check_images(build_dataset(DataConfig(name="npz", path=str(f))), pixels[:, None])
    hwc = np.random.default_rng(3).random((4, 5, 6, 3)).astype(np.float32)  # floats in [0, 1], channels last
    np.savez(f, x=hwc, y=np.zeros(4))
    ds = build_dataset(DataConfig(name="npz", path=str(f)))
    assert ds.shape == (3, 5, 6)
    x = all_samples(ds)
    assert torch.allclose(x, torch.from_numpy(hwc.transpose(0, 3, 1, 2) * 2 - 1), atol=1e-6)
    pts = np.random.default_rng(4).normal(size=(50, 3)).astype(np.float64)
    np.savez(f, pts=pts)
    ds = build_dataset(DataConfig(name="npz", path=str(f)))
    assert ds.kind == "points" and ds.shape == (3,)
    assert torch.allclose(all_samples(ds), torch.from_numpy(pts).float())  # points are not rescaled
    signed = np.linspace(-1, 1, 2 * 16).reshape(2, 4, 4)
    np.savez(f, signed=signed)
    assert torch.allclose(all_samples(build_dataset(DataConfig(name="npz", path=str(f)))),
                          torch.from_numpy(signed[:, None]).float())
    np.savez(f, a=pixels.astype(np.uint16) * 4)
    ds = build_dataset(DataConfig(name="npz", path=str(f), value_range=(0, 1020)))
    assert torch.allclose(all_samples(ds), expected_pixels(pixels[:, None]), atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 3, 8, 3), (4, 1, 8, 1), (4, 3, 8, 1)])
def test_npz_images_whose_channels_could_be_first_or_last_warn(tmp_path, shape):
    """(N, 3, 8, 3) is NCHW of width 3 or NHWC of height 3: read as the first, silently, which scrambled the
    second's pixels (an audit's case, 2026-12-06)."""
    f = tmp_path / "a.npz"
    np.savez(f, x=np.zeros(shape, np.uint8))
    with pytest.warns(UserWarning, match=r"a\.npz: images of shape .* could have 1 or 3 channels first or last; "
                                         rf"read as \(N, C, H, W\) with C = {shape[1]}"):
        ds = build_dataset(DataConfig(name="npz", path=str(f)))
    assert ds.shape == shape[1:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.savez(f, x=np.zeros((4, 3, 8, 5), np.uint8))
        build_dataset(DataConfig(name="npz", path=str(f)))


def test_npz_errors(tmp_path, pixels):
    f = tmp_path / "a.npz"
    np.savez(f, a=pixels, b=pixels)
    with pytest.raises(ValueError, match="npz_key"):
        build_dataset(DataConfig(name="npz", path=str(f)))
    assert len(build_dataset(DataConfig(name="npz", path=str(f), npz_key="b"))) == 10
    with pytest.raises(ValueError, match="'c'"):
        build_dataset(DataConfig(name="npz", path=str(f), npz_key="c"))
    data = f.read_bytes()
    t = tmp_path / "t.npz"
    t.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as e:
        build_dataset(DataConfig(name="npz", path=str(t)))
    assert str(t) in str(e.value)
    np.savez(f, a=np.zeros((2, 3, 4, 5, 6)))
    with pytest.raises(ValueError, match="shape"):
        build_dataset(DataConfig(name="npz", path=str(f)))
    np.savez(f, a=np.full((2, 4, 4), 3.0))
    with pytest.raises(ValueError, match="value_range"):
        build_dataset(DataConfig(name="npz", path=str(f)))
    np.savez(f, a=np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="NaN"):
        build_dataset(DataConfig(name="npz", path=str(f)))
    with pytest.raises(FileNotFoundError):
        build_dataset(DataConfig(name="npz", path=str(tmp_path / "missing.npz")))


README_FASHION_DIR = "/usr/share/datasets/fashion-mnist/"  # README: fashion_mnist's default data.path


@pytest.mark.skipif(not os.path.isdir(README_FASHION_DIR),
                    reason=f"Fashion-MNIST not installed at {README_FASHION_DIR}")
def test_fashion_mnist_default_path_is_the_documented_one_and_scaled_to_pm1():
    ds = build_dataset(DataConfig(name="fashion_mnist", max_samples=2000))
    assert ds.source == README_FASHION_DIR and ds.shape == (1, 28, 28)
    x = all_samples(ds)
    # uint8 pixels 0..255 -> [-1, 1]: the background (0) is exactly -1, the brightest pixel (255) exactly 1
    assert x.min().item() == -1.0 and x.max().item() == 1.0


def test_float_images_spanning_exactly_0_to_1_map_to_pm1(tmp_path):
    # data.value_range default: "for floats (0, 1) when no value is negative, else (-1, 1)" -- 0 is not negative
    a = np.linspace(0.0, 1.0, 2 * 16, dtype=np.float32).reshape(2, 4, 4)
    np.savez(tmp_path / "f.npz", x=a)
    x = all_samples(build_dataset(DataConfig(name="npz", path=str(tmp_path / "f.npz"))))
    assert torch.allclose(x, torch.from_numpy(a[:, None] * 2 - 1), atol=1e-6)


def test_mixture_nominal_size_default():
    # README's data table: nominal_size 100000, the len() of a mixture
    assert len(build_dataset(DataConfig(name="ring8"))) == 100000


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_an_object_array_is_named_as_such_not_as_a_damaged_file(tmp_path, suffix):
    """numpy refuses a dtype-object array without pickle; fastgan never unpickles data files, and said the intact
    file was "corrupt or truncated"."""
    f = tmp_path / f"a{suffix}"
    objects = np.array([np.zeros(3), None], dtype=object)
    np.savez(f, x=objects) if suffix == ".npz" else np.save(f, objects)
    with pytest.raises(ValueError, match=r"holds Python objects \(dtype object\), which fastgan does not load") as e:
        build_dataset(DataConfig(name="npz", path=str(f)))
    assert "corrupt" not in str(e.value) and "not a readable" not in str(e.value)


# ---- memory ----------------------------------------------------------------------------------------------
def test_max_samples_keeps_only_those_samples(monkeypatch):
    """data.max_samples took a view of the loaded array: a CPU run kept the whole file's samples in memory."""
    import gc
    import weakref

    import fastgan.data as fd

    loaded = [np.zeros((1000, 1, 4, 4), np.uint8)]
    whole = weakref.ref(loaded[0])
    monkeypatch.setattr(fd, "load_arrays", lambda cfg: (loaded.pop(), "images", "x.npz"))
    ds = build_dataset(DataConfig(name="npz", path="x.npz", max_samples=10))
    gc.collect()
    assert len(ds) == 10
    assert whole() is None, "the whole loaded array is still held"


def _traced_peak(fn):
    """fn()'s result and the most memory numpy (and Python) held at once while it ran, after a first call
    (imports and caches)."""
    import tracemalloc

    fn()
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_image_folder_is_read_into_one_array(tmp_path):
    """The images were gathered in a list and np.stack'ed: the set was held twice while loading."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.bmp")
    ds, peak = _traced_peak(lambda: build_dataset(DataConfig(name="image_folder", path=str(tmp_path))))
    size = 40 * 3 * 64 * 64
    assert len(ds) == 40
    assert peak < 1.5 * size, (peak, size)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_float32_npz_images_are_not_copied_while_loading(tmp_path, suffix):
    """np.array(npz[key]) and astype(np.float32) each copied an array numpy had just read (3x the set at once,
    with the scaling)."""
    a = np.random.default_rng(0).random((4000, 1, 16, 16), dtype=np.float32)  # 4 MiB: numpy reads 256 KiB at once
    f = tmp_path / f"a{suffix}"
    np.save(f, a) if suffix == ".npy" else np.savez(f, x=a)
    ds, peak = _traced_peak(lambda: build_dataset(DataConfig(name="npz", path=str(f))))
    assert torch.equal(all_samples(ds), torch.from_numpy(a) * 2 - 1)
    assert peak < 1.5 * a.nbytes, (peak, a.nbytes)
