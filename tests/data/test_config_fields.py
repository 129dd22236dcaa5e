"""Config fields the chosen data set or architecture does not read are refused (they were recorded and ignored:
a data.path without data.name=npz trained on the default mixture); YAML 1.2 numbers and no duplicate keys;
DataConfigs made in Python are checked; npz arrays that are durations, past float32, or empty; symlinked image
folders."""
import os
import warnings

import numpy as np
import pytest
import torch

from fastgan import config as C
from fastgan.data import DataConfig, build_dataset
from fastgan.models.config import ModelConfig


@pytest.mark.parametrize("fields, message", [
    (dict(path="/tmp/x.npz"), r"data\.path: not used by data\.name='roth3d'.*set data\.name to the file's format"),
    (dict(split="test"), r"data\.split: not used by data\.name='roth3d'"),
    (dict(name="npz", path="x.npz", split="test"), r"data\.split: not used by data\.name='npz', only by mnist, "
                                                   r"fashion_mnist, cifar10"),
    (dict(name="image_folder", path="d", split="all"), r"data\.split: not used by data\.name='image_folder'"),
    (dict(max_samples=5), r"data\.max_samples: not used by data\.name='roth3d'"),
    (dict(name="fashion_mnist", image_size=32), r"data\.image_size: not used by data\.name='fashion_mnist', only "
                                                r"by image_folder"),
    (dict(name="fashion_mnist", channels=3), r"data\.channels: not used"),
    (dict(name="npz", path="x.npz", image_size=8), r"data\.image_size: not used"),
    (dict(name="fashion_mnist", npz_key="x"), r"data\.npz_key: not used"),
    (dict(name="fashion_mnist", mixture_std=0.1), r"data\.mixture_std: not used by data\.name='fashion_mnist'"),
    (dict(name="fashion_mnist", nominal_size=10), r"data\.nominal_size: not used"),
    (dict(name="fashion_mnist", value_range=(0, 1)), r"data\.value_range: not used"),
])
def test_data_fields_the_data_set_does_not_read_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**fields)
    overrides = [f"data.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in fields.items()]
    with pytest.raises(C.ConfigError, match=message.replace("^", "")):
        C.coerce(None, overrides)


@pytest.mark.parametrize("arch, field, value", [("dcgan", "mlp_activation", "relu"),
                                                ("goodfellow", "mlp_activation", "leaky_relu"),
                                                ("mlp", "maxout_pieces", 3), ("dcgan", "d_dropout", 0.3),
                                                ("mlp", "d_input_dropout", 0.0), ("goodfellow", "dcgan_width", 32),
                                                ("dcgan", "g_output_bias", "marginals"),
                                                ("resnet", "dcgan_width", 32), ("dcgan", "resnet_width", 32),
                                                ("mlp", "resnet_width", 8), ("resnet", "mlp_activation", "relu"),
                                                ("resnet", "d_input_batchnorm", True),
                                                ("resnet", "g_output_bias", "marginals")])
def test_model_fields_the_architecture_does_not_read_are_refused(arch, field, value):
    with pytest.raises(ValueError, match=rf"^model\.{field}: only used by arch .* got arch '{arch}'"):
        ModelConfig(arch=arch, **{field: value})
    ModelConfig(arch=dict(mlp_activation="mlp", maxout_pieces="goodfellow", d_dropout="goodfellow",
                          d_input_dropout="goodfellow", dcgan_width="dcgan", g_output_bias="goodfellow",
                          resnet_width="resnet", d_input_batchnorm="dcgan")[field],
                **{field: value})


def test_resnet_refuses_the_other_architectures_widths_naming_its_own():
    for field, value in (("g_hidden", (8,)), ("d_hidden", (8,)), ("dcgan_g_filters", (8, 8, 8))):
        with pytest.raises(ValueError, match=rf"^model\.{field}: .*arch 'resnet' \(set model\.resnet_width instead\)$"):
            ModelConfig(arch="resnet", **{field: value})
    with pytest.raises(ValueError, match=r"^model\.dcgan_activation: only used by arch 'dcgan', got arch 'resnet'$"):
        ModelConfig(arch="resnet", dcgan_activation="tanh")
    with pytest.raises(ValueError, match=r"^model\.leaky_slope: only used by leaky ReLUs .* got arch 'resnet'$"):
        ModelConfig(arch="resnet", leaky_slope=0.1)
    cfg = ModelConfig(arch="resnet", resnet_width=8, g_batchnorm=False, spectral_norm=True, latent_dist="uniform")
    assert (cfg.resolved("latent_dim"), cfg.resolved("g_batchnorm"), cfg.resolved("d_batchnorm")) == (128, False, True)


@pytest.mark.parametrize("fields, where", [(dict(arch="mlp"), " with activation 'tanh'"),
                                           (dict(arch="mlp", mlp_activation="relu"), " with activation 'relu'"),
                                           (dict(arch="goodfellow"), ""),
                                           (dict(arch="dcgan", dcgan_activation="tanh"), " with activation 'tanh'")])
def test_leaky_slope_without_a_leaky_relu_is_refused(fields, where):
    with pytest.raises(ValueError, match=rf"^model\.leaky_slope: only used by leaky ReLUs .* got arch "
                                         rf"'{fields['arch']}'{where}$"):
        ModelConfig(leaky_slope=0.1, **fields)
    ModelConfig(**fields)  # the default slope: nothing was set
    ModelConfig(arch="mlp", mlp_activation="leaky_relu", leaky_slope=0.1)
    ModelConfig(arch="dcgan", leaky_slope=0.1)  # DCGAN's D


def test_a_list_value_range_is_a_tuple():
    cfg = C.coerce(C.TrainConfig(data=DataConfig(name="npz", path="x.npz", value_range=[0, 1])))
    assert cfg.data.value_range == (0, 1)


# ------------------------------------------------------------------ YAML

@pytest.mark.parametrize("text, value", [("010", 10), ("0777", 777), ("0o17", 15), ("0x10", 16), ("-3", -3),
                                         ("1e-4", 1e-4), ("1.5", 1.5), (".inf", float("inf")), ("1:30", "1:30"),
                                         ("True", True), ("off", "off"), ("2024-01-01", "2024-01-01")])
def test_yaml_reads_numbers_as_yaml_1_2(text, value):
    assert C.yaml_load(text) == value and type(C.yaml_load(text)) is type(value)


def test_overrides_take_decimal_integers_exactly():
    cfg = C.coerce(None, ["run.steps=010", "run.seed=9007199254740993"])
    assert cfg.run.steps == 10 and cfg.run.seed == 9007199254740993
    with pytest.raises(C.ConfigError, match=r"run\.steps: must be an integer, got '1:30'"):
        C.coerce(None, ["run.steps=1:30"])
    assert C.coerce({"run": {"seed": "9007199254740993"}}).run.seed == 9007199254740993


def test_a_repeated_key_in_a_config_file_names_its_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run:\n  steps: 10\n  name: mine\noptim:\n  lr_g: 1.0e-4\nrun:\n  seed: 3\n")
    with pytest.raises(C.ConfigError, match=rf"^{p}:6:1: not valid YAML: duplicate key 'run' \(first at line 1\)"):
        C.load_config(p)
    p.write_text("optim:\n  lr_g: 1.0e-4\n  lr_g: 1.0e-2\n")
    with pytest.raises(C.ConfigError, match=r":3:3: not valid YAML: duplicate key 'lr_g' \(first at line 2\)"):
        C.load_config(p)


# ------------------------------------------------------------------ build_dataset

@pytest.mark.parametrize("fields, message", [(dict(max_samples=-100), r"data\.max_samples"),
                                             (dict(max_samples=True), r"data\.max_samples"),
                                             (dict(keep_on_device="maybe"), r"data\.keep_on_device")])
def test_build_dataset_checks_a_dataconfig_made_in_python(tmp_path, fields, message):
    np.savez(tmp_path / "x.npz", x=np.zeros((4, 3), np.float32))
    with pytest.raises((ValueError, TypeError), match=message):
        build_dataset(DataConfig(name="npz", path=str(tmp_path / "x.npz"), **fields))


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 2, 2), "m8[s]"), r"images must be numeric, got timedelta64"),
    (np.full((4, 2, 2), 1e300), r"images contain NaN or infinite values \(in float32"),
    (np.full((5, 3), 1e300), r"points contain NaN or infinite values \(in float32"),
])
def test_npz_arrays_refused_naming_the_file(tmp_path, array, message):
    """Points past float32's range: numpy's overflow warning came first, and the message said the file held NaN or
    infinite values, which it did not."""
    p = tmp_path / "x.npz"
    np.savez(p, x=array)
    images = array.ndim == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=message) as e:
            build_dataset(DataConfig(name="npz", path=str(p),
                                     value_range=(0, 1e300) if images and array.dtype.kind == "f" else None))
    assert str(p) in str(e.value)


def test_value_ranges_float32_cannot_scale_and_points_refuse_it(tmp_path):
    p = tmp_path / "u.npz"
    np.savez(p, x=np.zeros((4, 2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"data\.value_range: .* scale of 2e-300, which float32 cannot hold"):
        build_dataset(DataConfig(name="npz", path=str(p), value_range=(0, 1e300)))
    np.savez(p, x=np.zeros((4, 3), np.float32))
    # a config that does not fit the loaded data: a ConfigError (the CLI's exit 2), as data.holdout's
    with pytest.raises(C.ConfigError, match=r"data\.value_range: maps image values .* holds points"):
        build_dataset(DataConfig(name="npz", path=str(p), value_range=(0, 1)))


def test_int16_images_keep_the_integer_default_range(tmp_path):
    p = tmp_path / "i.npz"
    np.savez(p, x=np.full((2, 3, 3), 255, np.int16))
    ds = build_dataset(DataConfig(name="npz", path=str(p)))
    assert torch.equal(ds.sample(2), torch.ones(2, 1, 3, 3))


def test_an_npz_without_arrays_says_so(tmp_path):
    p = tmp_path / "e.npz"
    np.savez(p)
    with pytest.raises(ValueError, match=rf"{p}: holds no arrays"):
        build_dataset(DataConfig(name="npz", path=str(p)))


def test_image_folders_follow_symlinked_folders_once(tmp_path):
    from PIL import Image

    from fastgan.data.folder import list_images

    root, more = tmp_path / "root", tmp_path / "more"
    root.mkdir()
    more.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "a.png")
    for name in ("b.png", "c.png"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(more / name)
    os.symlink(more, root / "more")
    os.symlink(root, root / "loop")  # a link to an enclosing folder: listed once, no endless walk
    assert [os.path.relpath(f, root) for f in list_images(root)] == ["a.png", "more/b.png", "more/c.png"]
    assert len(build_dataset(DataConfig(name="image_folder", path=str(root)))) == 3


def test_image_folders_read_each_real_file_once(tmp_path):
    """A folder of links into a pool, beside the pool, read each image twice (once a link)."""
    from PIL import Image

    from fastgan.data.folder import list_images

    (tmp_path / "pool").mkdir()
    (tmp_path / "train").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "pool" / name)
        os.symlink(tmp_path / "pool" / name, tmp_path / "train" / name)
    os.symlink(tmp_path / "pool" / "a.png", tmp_path / "pool" / "z.png")  # a second name in the same folder
    with pytest.warns(UserWarning, match=r"3 image file name\(s\) lead to a file already listed.*pool/z.png is "
                                         r".*pool/a.png"):
        listed = list_images(tmp_path)
    assert [os.path.relpath(f, tmp_path) for f in listed] == ["pool/a.png", "pool/b.png"]
    with pytest.warns(UserWarning, match="read once"):
        assert len(build_dataset(DataConfig(name="image_folder", path=str(tmp_path)))) == 2


def test_image_folders_leave_out_hidden_files_and_folders(tmp_path):
    """macOS's AppleDouble files (`._a.png`, no image) and a thumbnail cache (`.cache/`, other sizes) stopped the
    load on an unreadable file or an image-size mismatch."""
    from PIL import Image

    from fastgan.data.folder import list_images

    (tmp_path / ".cache").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / ".cache" / "thumb.png")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert [os.path.relpath(f, tmp_path) for f in list_images(tmp_path)] == ["a.png"]
    assert len(build_dataset(DataConfig(name="image_folder", path=str(tmp_path)))) == 1


def test_a_section_header_without_keys_keeps_the_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run:\nmethod:\n  roth:\n")
    cfg = C.load_config(p)
    assert cfg.run == C.TrainConfig().run and cfg.method.roth == C.TrainConfig().method.roth


# ------------------------------------------------------------------ docs/config.md's table of which fields are read where

def test_which_data_sets_read_which_fields_is_the_readmes_table():
    """docs/config.md (Data): `path`, `max_samples` only for file data; `split` only for mnist, fashion_mnist, cifar10;
    `nominal_size`, `mixture_std` only for the mixtures; `image_size`, `channels` only for image_folder; `npz_key`,
    `value_range` only for npz. (unread_fields and the refusals share one table, so this pins the table itself.)"""
    from fastgan.data.config import DATASETS, unread_fields

    files, mixtures = {"mnist", "fashion_mnist", "cifar10", "image_folder", "npz"}, {"roth3d", "ring8", "grid25"}
    read_by = {"path": files, "max_samples": files, "split": {"mnist", "fashion_mnist", "cifar10"},
               "nominal_size": mixtures, "mixture_std": mixtures, "image_size": {"image_folder"},
               "channels": {"image_folder"}, "npz_key": {"npz"}, "value_range": {"npz"}}
    for name in DATASETS:
        assert set(unread_fields(name)) == {k for k, names in read_by.items() if name not in names}, name
    assert "set data.name to the file's format" in unread_fields("roth3d")["path"]
    assert "set data.name" not in unread_fields("roth3d")["max_samples"]


def test_which_architectures_read_which_fields_is_the_readmes_table():
    """docs/config.md (Models): `mlp_activation` only for mlp; `maxout_pieces`, `d_input_dropout`, `d_dropout` only for
    goodfellow; `dcgan_width` only for dcgan; `g_output_bias` only for mlp and goodfellow; `leaky_slope` only for mlp with leaky_relu and dcgan with relu;
    g_hidden / d_hidden not for dcgan or resnet; dcgan_g_filters / dcgan_activation / d_input_batchnorm only for dcgan;
    `resnet_width` only for resnet."""
    from fastgan.models.config import unread_fields

    good = {"maxout_pieces", "d_input_dropout", "d_dropout"}
    assert set(unread_fields("mlp", "tanh")) == good | {"dcgan_width", "dcgan_g_filters", "dcgan_activation",
                                                        "leaky_slope", "d_input_batchnorm", "resnet_width"}
    assert set(unread_fields("mlp", "relu")) == set(unread_fields("mlp", "tanh"))
    assert set(unread_fields("mlp", "leaky_relu")) == set(unread_fields("mlp", "tanh")) - {"leaky_slope"}
    assert set(unread_fields("goodfellow")) == {"mlp_activation", "dcgan_width", "dcgan_g_filters",
                                                "dcgan_activation", "leaky_slope", "d_input_batchnorm", "resnet_width"}
    assert set(unread_fields("dcgan", dcgan_activation="relu")) == good | {"mlp_activation", "g_hidden", "d_hidden",
                                                                           "g_output_bias", "resnet_width"}
    assert set(unread_fields("dcgan", dcgan_activation="tanh")) == good | {"mlp_activation", "g_hidden", "d_hidden",
                                                                           "g_output_bias", "leaky_slope",
                                                                           "resnet_width"}
    # resnet reads resnet_width, the BatchNorm switches and the shared fields only
    assert set(unread_fields("resnet")) == good | {"mlp_activation", "g_hidden", "d_hidden", "g_output_bias",
                                                   "leaky_slope", "dcgan_width", "dcgan_g_filters",
                                                   "dcgan_activation", "d_input_batchnorm"}


@pytest.mark.parametrize("fields, message", [
    (dict(name="ring8", holdout=5), r"^data\.holdout: the built-in mixture 'ring8' draws fresh samples"),
    (dict(name="mnist"), r"^data\.path: required for data\.name='mnist'"),
    (dict(name="npz", path="x.npz", value_range=(1, 1)), r"^data\.value_range: must be \(lo, hi\) with lo < hi"),
    (dict(name="npz", path="x.npz", value_range=(0, 1, 2)), r"^data\.value_range: must be \(lo, hi\) with lo < hi"),
])
def test_dataconfig_rules(fields, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**fields)


@pytest.mark.parametrize("value, message", [(("a", "b"), r"data\.value_range\[0\]: must be a number, got 'a'"),
                                            ((0, None), r"data\.value_range\[1\]: must be a number, got None"),
                                            (5, r"data\.value_range: must be \(lo, hi\)")])
def test_a_value_range_of_non_numbers_made_in_python_names_the_field(value, message):
    """DataConfig compared float(lo) < float(hi) before any type check: ValueError "could not convert string to
    float: 'a'" or a TypeError, naming no field."""
    with pytest.raises(C.ConfigError, match=message):
        build_dataset(DataConfig(name="npz", path="x.npz", value_range=value))


def test_data_choices_and_what_they_accept():
    assert C.coerce(None, ["data.name=mnist", "data.path=d", "data.split=all"]).data.split == "all"
    assert C.coerce(None, ["data.name=fashion_mnist"]).data.path is None  # its default folder
    assert C.coerce(None, ["data.name=npz", "data.path=x", "data.value_range=[0, 1]"]).data.value_range == (0.0, 1.0)
    with pytest.raises(C.ConfigError, match=r"data\.channels: must be one of \(0, 1, 3\), got 4"):
        C.coerce(None, ["data.name=image_folder", "data.path=d", "data.channels=4"])
    with pytest.raises(C.ConfigError, match=r"data\.max_samples: must be >= 1, got 0"):
        C.coerce(None, ["data.name=npz", "data.path=x", "data.max_samples=0"])


@pytest.mark.parametrize("value", [[], [0], [8, -1], [True], (8, 2.0)])
def test_hidden_widths_must_be_positive_ints(value):
    for name in ("g_hidden", "d_hidden"):
        with pytest.raises(ValueError, match=rf"^model\.{name}: must be a non-empty list of positive ints"):
            ModelConfig(**{name: value})


def test_model_lists_become_tuples_and_resolved_keeps_false():
    m = ModelConfig(g_hidden=[8, 4], d_hidden=[2])
    assert m.g_hidden == (8, 4) and m.d_hidden == (2,) and hash(m) == hash(ModelConfig(g_hidden=(8, 4), d_hidden=(2,)))
    assert ModelConfig(arch="dcgan", dcgan_g_filters=[8, 8, 8]).dcgan_g_filters == (8, 8, 8)
    dc = ModelConfig(arch="dcgan", g_batchnorm=False, d_batchnorm=False)
    assert (dc.resolved("g_batchnorm"), dc.resolved("d_batchnorm")) == (False, False)
    with pytest.raises(ValueError, match=r"^model\.d_hidden: not used by arch 'dcgan'"):
        ModelConfig(arch="dcgan", d_hidden=(8,))


def test_a_repeated_key_in_a_one_line_mapping_is_an_error(tmp_path):
    """Until 2026-12-02 a key repeated on one line (a flow mapping) passed, its last value silently winning: the
    check compared the keys' line numbers."""
    with pytest.raises(C.ConfigError, match=r"^run: duplicate key 'steps' in --set 'run=\{steps: 1, steps: 2\}'$"):
        C.coerce(None, ["run={steps: 1, steps: 2}"])
    p = tmp_path / "c.yaml"
    p.write_text("run: {steps: 1, steps: 2}\n")
    with pytest.raises(C.ConfigError, match=r"duplicate key 'steps' \(first at line 1\)"):
        C.load_config(p)
    assert C.coerce(None, ["run.name=[x"]).run.name == "[x"  # text that is not YAML stays text
