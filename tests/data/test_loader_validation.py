"""Unsuitable files give one ValueError naming the file, never silently wrong data."""
import pickle
import struct

import warnings

import numpy as np
import pytest
import torch

from fastgan.data import DataConfig, build_dataset
from fastgan.data.idx import parse_idx


def idx_header(code: int, dims) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def build_error(cfg: DataConfig, path, exc=ValueError, match=None) -> str:
    with pytest.raises(exc, match=match) as e:
        build_dataset(cfg)
    assert str(path) in str(e.value)
    return str(e.value)


# ---- image folder: pixel modes ----------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    pytest.param(lambda: (np.full((6, 6), 40000, np.uint16), "png"), id="uint16-png"),
    pytest.param(lambda: (np.full((6, 6), 40000, np.uint16), "tif"), id="uint16-tiff"),
    pytest.param(lambda: (np.full((6, 6), 7, np.int32), "tif"), id="int32-tiff"),
    pytest.param(lambda: (np.full((6, 6), 0.5, np.float32), "tif"), id="float-tiff"),
])
@pytest.mark.parametrize("channels", [0, 1, 3])
def test_image_folder_refuses_non_8bit_modes(tmp_path, make, channels):
    from PIL import Image

    a, ext = make()
    f = tmp_path / f"a.{ext}"
    Image.fromarray(a).save(f)
    mode = Image.open(f).mode
    msg = build_error(DataConfig(name="image_folder", path=str(tmp_path), channels=channels), f, match="8 bits")
    assert repr(mode) in msg


def test_image_folder_refuses_non_8bit_image_after_8bit_ones(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((6, 6), 100, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((6, 6), 40000, np.uint16)).save(tmp_path / "b.png")
    build_error(DataConfig(name="image_folder", path=str(tmp_path)), tmp_path / "b.png", match="I;16")


def test_image_folder_modes_channels(tmp_path):
    """Grey modes (with or without alpha) give 1 channel, colour and palette modes 3; alpha is dropped."""
    from PIL import Image

    cases = {"L": Image.new("L", (4, 4), 100), "LA": Image.new("LA", (4, 4), (100, 7)),
             "1": Image.new("1", (4, 4), 1),
             "RGB": Image.new("RGB", (4, 4), (10, 20, 30)), "RGBA": Image.new("RGBA", (4, 4), (10, 20, 30, 7)),
             "P": Image.new("RGB", (4, 4), (0, 51, 102)).convert("P")}  # a web-palette colour: kept exactly
    expect = {"L": [100], "LA": [100], "1": [255], "RGB": [10, 20, 30], "RGBA": [10, 20, 30], "P": [0, 51, 102]}
    for mode, im in cases.items():
        d = tmp_path / mode
        d.mkdir()
        im.save(d / ("a.gif" if mode == "P" else "a.png"))
        assert Image.open(next(d.iterdir())).mode == mode
        ds = build_dataset(DataConfig(name="image_folder", path=str(d)))
        assert ds.shape == (len(expect[mode]), 4, 4), mode
        x = torch.cat(list(ds.batches(4)))[0, :, 0, 0]
        want = torch.tensor(expect[mode], dtype=torch.float32) / 127.5 - 1
        assert torch.allclose(x, want, atol=1e-6), (mode, x, want)


def test_image_folder_decompression_bomb(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("L", (200, 200), 5).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10000)  # restored after the test
    build_error(DataConfig(name="image_folder", path=str(tmp_path)), tmp_path / "big.png",
                match="MAX_IMAGE_PIXELS")


# ---- npz: values and shapes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_npz_non_finite_images(tmp_path, bad):
    f = tmp_path / "a.npz"
    a = np.full((5, 4, 4), 0.25, np.float32)
    a[3, 1, 2] = bad
    np.savez(f, x=a)
    build_error(DataConfig(name="npz", path=str(f)), f, match="NaN or infinite")


def test_npz_all_nan_images(tmp_path):
    f = tmp_path / "a.npz"
    np.savez(f, x=np.full((5, 4, 4), np.nan, np.float32))
    build_error(DataConfig(name="npz", path=str(f)), f, match="NaN or infinite")
    build_error(DataConfig(name="npz", path=str(f), value_range=(0, 1)), f, match="NaN or infinite")


@pytest.mark.parametrize("shape", [(5, 0), (5, 0, 0), (5, 4, 0), (5, 1, 0, 4), (5, 0, 4, 3)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_npz_empty_sample_shape(tmp_path, shape, dtype):
    f = tmp_path / "a.npz"
    np.savez(f, x=np.zeros(shape, dtype))
    build_error(DataConfig(name="npz", path=str(f)), f, match="empty")


@pytest.mark.parametrize("shape", [(5, 2), (5, 4, 4)])
def test_npz_complex_refused(tmp_path, shape):
    f = tmp_path / "a.npz"
    np.savez(f, x=np.ones(shape) * (1 + 2j))
    build_error(DataConfig(name="npz", path=str(f)), f, match="complex")


@pytest.mark.parametrize("content", [b"x,y\n1,2\n", pickle.dumps(np.ones((3, 2))), b""], ids=["text", "pickle", "empty"])
def test_npz_that_is_no_npz_is_named_so_not_a_pickle(tmp_path, content):
    """np.load reads an unknown file as a pickle and suggests allow_pickle=True: the wrong advice for a file
    that is no npz/npy at all."""
    f = tmp_path / "a.npz"
    f.write_bytes(content)
    msg = build_error(DataConfig(name="npz", path=str(f)), f, match="not an npz/npy file")
    assert "pickle" not in msg


def test_npy_of_objects_is_refused(tmp_path):
    f = tmp_path / "a.npy"
    np.save(f, np.array([{"a": 1}, None], dtype=object))
    build_error(DataConfig(name="npz", path=str(f)), f, match=r"its array holds Python objects \(dtype object\)")


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def _npy_header(shape, descr="|u1") -> bytes:
    import io

    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": descr, "fortran_order": False, "shape": shape})
    return b.getvalue()


@pytest.mark.parametrize("shape", [(2**40,), (2**20, 2**20), (1000, 28, 28)])
@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_npz_header_declaring_more_data_than_the_file_holds_is_named(tmp_path, shape, suffix):
    """numpy allocates what a .npy header declares before reading: a header that lies (or a file cut short) made a
    MemoryError of "1.00 TiB", which the CLI read as a batch too large ("lower optim.batch_size")."""
    import zipfile

    data = _npy_header(shape) + bytes(100)
    f = tmp_path / f"a{suffix}"
    if suffix == ".npy":
        f.write_bytes(data)
    else:
        with zipfile.ZipFile(f, "w") as z:
            z.writestr("x.npy", data)
    msg = build_error(DataConfig(name="npz", path=str(f)), f, match="truncated or its header is wrong")
    assert str(shape) in msg and "holds 100 bytes" in msg


def _zip_fields(raw: bytes, **fields) -> bytes:
    """raw (a one-member zip) with 2-byte fields of its local and central headers replaced."""
    import struct as st

    local, central = raw.index(b"PK\x03\x04"), raw.index(b"PK\x01\x02")
    b = bytearray(raw)
    offsets = {"flags": (6, 8), "method": (8, 10), "version": (None, 6)}  # in the local, the central header
    for name, value in fields.items():
        for base, off in zip((local, central), offsets[name]):
            if off is not None:
                b[base + off:base + off + 2] = st.pack("<H", value)
    return bytes(b)


@pytest.mark.parametrize("damage", ["header-bracket", "encrypted", "deflate64", "zip-version"])
def test_npz_damage_numpy_or_zipfile_raise_outside_valueerror_is_named(tmp_path, damage):
    """One flipped byte in a .npy header made numpy's parser raise tokenize.TokenError; an encrypted member,
    a compression method zipfile lacks (Windows' Deflate64) or a newer zip version a RuntimeError or
    NotImplementedError: each a traceback from the CLI, which names ValueErrors and OSErrors only."""
    import io
    import zipfile

    npy = bytearray(_npy_bytes(np.zeros((4, 8, 8), np.float32)))
    if damage == "header-bracket":
        npy[npy.index(b"}")] = ord(" ")
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr("x.npy", bytes(npy))
    raw = {"header-bracket": b.getvalue(), "encrypted": _zip_fields(b.getvalue(), flags=1),
           "deflate64": _zip_fields(b.getvalue(), method=9), "zip-version": _zip_fields(b.getvalue(), version=99)}
    f = tmp_path / "a.npz"
    f.write_bytes(raw[damage])
    build_error(DataConfig(name="npz", path=str(f)), f)
    if damage == "header-bracket":
        f = tmp_path / "a.npy"
        f.write_bytes(bytes(npy))
        build_error(DataConfig(name="npz", path=str(f)), f)


def test_a_zip_holding_no_npy_member_is_not_read_as_arrays(tmp_path):
    """np.load lists every member of a zip and reads a non-.npy one as bytes: a zip of PNGs held "several arrays
    ['a.png', 'b.png']", and npz_key=a.png gave an array of shape ()."""
    import zipfile

    f = tmp_path / "images.zip"
    with zipfile.ZipFile(f, "w") as z:
        z.writestr("a.png", b"\x89PNG...")
        z.writestr("b.png", b"\x89PNG...")
    for key in (None, "a.png"):
        build_error(DataConfig(name="npz", path=str(f), npz_key=key), f, match=r"holding no \.npy arrays")
    with zipfile.ZipFile(f, "w") as z:  # beside an array, another member is left alone
        z.writestr("README", b"text")
        z.writestr("x.npy", _npy_bytes(np.zeros((3, 2), np.float32)))
    assert build_dataset(DataConfig(name="npz", path=str(f))).shape == (2,)


def test_npz_key_on_a_npy_file_is_refused(tmp_path):
    """A .npy holds one unnamed array: data.npz_key was recorded in config.yaml and ignored."""
    from fastgan.config import ConfigError

    f = tmp_path / "a.npy"
    np.save(f, np.zeros((3, 2), np.float32))
    build_error(DataConfig(name="npz", path=str(f), npz_key="x"), f, exc=ConfigError, match=r"^data\.npz_key: ")


# ---- IDX: sizes ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [(3, 0, 5), (3, 5, 0), (0, 5, 5)])
def test_idx_zero_dimension(tmp_path, dims):
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(idx_header(0x08, dims))
    build_error(DataConfig(name="mnist", path=str(f)), f, match="no data")
    build_error(DataConfig(name="mnist", path=str(tmp_path)), f, match="no data")  # found in the folder


@pytest.mark.parametrize("dims,payload", [((2**32 - 1,) * 3, 0), ((2**31, 2**31, 4), 0), ((2**31, 2**31, 4), 16),
                                          ((0, 2**32 - 1, 2**32 - 1), 0)])
def test_idx_huge_header_dims(tmp_path, dims, payload):
    f = tmp_path / "huge.idx"
    f.write_bytes(idx_header(0x08, dims) + bytes(payload))
    msg = build_error(DataConfig(name="mnist", path=str(f)), f)
    assert str(dims) in msg
    n = 1
    for d in dims:
        n *= d
    if n:
        assert f"need {n} data bytes" in msg and f"found {payload}" in msg


def test_parse_idx_size_uses_exact_ints():
    with pytest.raises(ValueError, match=f"need {4 * (2**32 - 1) ** 3} data bytes, found 0"):
        parse_idx(idx_header(0x0C, (2**32 - 1,) * 3), "x")


# ---- split with a single file -------------------------------------------------------------------------------
def test_idx_file_path_with_split(tmp_path):
    f = tmp_path / "train-images-idx3-ubyte"
    a = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    f.write_bytes(idx_header(0x08, a.shape) + a.tobytes())
    assert len(build_dataset(DataConfig(name="mnist", path=str(f)))) == 2
    for split in ("test", "all"):
        msg = build_error(DataConfig(name="fashion_mnist", path=str(f), split=split), f, match="data.split")
        assert repr(split) in msg and "data.path" in msg


def test_cifar_file_path_with_split(tmp_path):
    f = tmp_path / "data_batch_1"
    with open(f, "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, fh)
    for split in ("train", "test"):
        build_error(DataConfig(name="cifar10", path=str(f), split=split), f, match="folder")


def test_split_refused_where_there_are_no_splits(tmp_path):
    """A split of an image folder or npz file would train on the one set there is: refused by the config (exit 2
    from the CLI, tests/data/test_config_fields.py), before anything is read."""
    f = tmp_path / "a.npz"
    np.savez(f, x=np.zeros((3, 4, 4), np.uint8))
    assert len(build_dataset(DataConfig(name="npz", path=str(f)))) == 3
    for name, split in (("npz", "test"), ("image_folder", "all")):
        with pytest.raises(ValueError, match=rf"^data\.split: not used by data\.name='{name}', only by mnist, "
                                             r"fashion_mnist, cifar10; got"):
            DataConfig(name=name, path=str(f), split=split)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_image_folder_applies_the_exif_orientation(tmp_path, mode):
    """A camera's portrait photo is stored landscape with orientation tag 6 (rotate 90° clockwise to view): the
    loader gives the upright image, as a viewer shows it, so mixed tags still share one size."""
    from PIL import Image

    stored = np.zeros((2, 3, 3), np.uint8)   # 2 rows, 3 columns as stored
    stored[0, 0] = 255                        # top-left as stored -> top-right when upright
    im = Image.fromarray(stored).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "a.png", exif=exif)
    Image.fromarray(stored).convert(mode).transpose(Image.Transpose.ROTATE_270).save(tmp_path / "b.png")
    ds = build_dataset(DataConfig(name="image_folder", path=str(tmp_path)))
    a, b = torch.cat(list(ds.batches(2)))
    assert ds.shape[1:] == (3, 2) and torch.equal(a, b)
    assert a[0, 0, 1] == 1 and a[0, 0, 0] == -1


def test_a_colour_folder_whose_first_image_is_gray_warns_once(tmp_path):
    """data.channels is taken from the first image: colour images after a gray first one were trained on in gray,
    without a word."""
    from PIL import Image

    from fastgan.data.folder import load_image_folder

    Image.new("L", (4, 4), 100).save(tmp_path / "a.png")
    Image.new("RGB", (4, 4), (70, 70, 70)).save(tmp_path / "a1.png")  # gray pixels stored as RGB: nothing lost
    for name in ("b.png", "c.png"):
        Image.new("RGB", (4, 4), (200, 20, 30)).save(tmp_path / name)
    with pytest.warns(UserWarning, match=r"b\.png: a colour image \(mode RGB\) read as grayscale: .* first image, "
                                         r"a\.png, .*data\.channels=3") as rec:
        x = load_image_folder(tmp_path)
    assert x.shape == (4, 1, 4, 4) and len(rec) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image_folder(tmp_path, channels=3).shape == (4, 3, 4, 4)  # asked for: no warning
        assert load_image_folder(tmp_path, channels=1).shape == (4, 1, 4, 4)
