"""ModelConfig: generator / discriminator / NTGAN noise net / DFM denoiser. Nested as `model:` in the
training config. Fields left at None take the paper default of the chosen architecture (ARCH_DEFAULTS)."""

from dataclasses import dataclass, field
from typing import Optional

from .._errors import ConfigError
from .._limits import NONNEG_F32

ARCHS = ("mlp", "goodfellow", "dcgan", "resnet")

# Paper defaults per architecture (see the modules for the sources).
ARCH_DEFAULTS = {
    # Roth et al. 2017, authors' 3DGAN code: z in R^2, G and D with two tanh layers of 128.
    "mlp": {"latent_dim": 2, "g_hidden": (128, 128), "d_hidden": (128, 128), "g_batchnorm": False,
            "d_batchnorm": False},
    # Goodfellow et al. 2014, MNIST (goodfeli/adversarial mnist.yaml): z in R^100, G: ReLU 1200-1200,
    # D: maxout 240x5 - 240x5 with dropout.
    "goodfellow": {"latent_dim": 100, "g_hidden": (1200, 1200), "d_hidden": (240, 240), "g_batchnorm": False,
                   "d_batchnorm": False},
    # NTGAN Table 1 (DCGAN-like): z in R^128, BatchNorm in G and in D after its first layer.
    "dcgan": {"latent_dim": 128, "g_hidden": None, "d_hidden": None, "g_batchnorm": True, "d_batchnorm": True},
    # Roth et al. 2017's CelebA / LSUN ResNet (Gulrajani et al.'s 64x64 ResNet): z ~ N(0, I) in R^128 ("128-dimensional
    # normal-(0,1) distribution (Gulrajani)", appendix 7.4), BatchNorm in G and D.
    "resnet": {"latent_dim": 128, "g_hidden": None, "d_hidden": None, "g_batchnorm": True, "d_batchnorm": True},
}


# fields only some architectures read (dcgan_activation, leaky_slope and the hidden widths: see unread_fields)
ARCH_ONLY = {"mlp_activation": ("mlp",), "maxout_pieces": ("goodfellow",), "d_input_dropout": ("goodfellow",),
             "d_dropout": ("goodfellow",), "dcgan_width": ("dcgan",), "g_output_bias": ("mlp", "goodfellow"),
             "d_input_batchnorm": ("dcgan",), "resnet_width": ("resnet",)}
# the convolutional architectures: image data only, g_hidden / d_hidden unread
CONV_ARCHS = ("dcgan", "resnet")


def unread_fields(arch, mlp_activation="tanh", dcgan_activation="relu") -> dict:
    """{field: why} for the fields a model of this architecture does not read: set away from their defaults they
    are refused (config.yaml would record a value nothing used), and a stored config's are dropped
    (config.from_stored), as the run used their defaults."""
    out = {}
    if arch == "dcgan":
        for name in ("g_hidden", "d_hidden"):
            out[name] = "not used by arch 'dcgan' (set model.dcgan_width or model.dcgan_g_filters instead)"
    elif arch == "resnet":
        for name in ("g_hidden", "d_hidden"):
            out[name] = "not used by arch 'resnet' (set model.resnet_width instead)"
    if arch != "dcgan":
        width = "model.resnet_width" if arch == "resnet" else "model.g_hidden"
        out["dcgan_g_filters"] = f"only used by arch 'dcgan', got arch {arch!r} (set {width} instead)"
        hint = " (set model.mlp_activation instead)" if arch == "mlp" else ""
        out["dcgan_activation"] = f"only used by arch 'dcgan', got arch {arch!r}{hint}"
    leaky = (arch == "mlp" and mlp_activation == "leaky_relu") or \
        (arch == "dcgan" and dcgan_activation == "relu")  # DCGAN's D: leaky ReLUs
    if not leaky:
        act = {"mlp": mlp_activation, "dcgan": dcgan_activation}.get(arch) if isinstance(arch, str) else None
        out["leaky_slope"] = ("only used by leaky ReLUs (arch 'mlp' with mlp_activation='leaky_relu', arch 'dcgan' "
                              f"with dcgan_activation='relu'), got arch {arch!r}"
                              + (f" with activation {act!r}" if act else ""))
    for name, archs in ARCH_ONLY.items():
        if arch not in archs:
            default = ModelConfig.__dataclass_fields__[name].default
            out[name] = f"only used by arch {' / '.join(map(repr, archs))}, got arch {arch!r} (leave it at {default!r})"
    return out


@dataclass(frozen=True)
class ModelConfig:
    arch: str = field(default="mlp", metadata={"choices": ARCHS})
    # Latent size; None: mlp 2, goodfellow 100, dcgan 128, resnet 128.
    latent_dim: Optional[int] = field(default=None, metadata={"min": 1})
    # Latent prior: standard normal, or uniform on [-1, 1] (Roth's --uniform_prior).
    latent_dist: str = field(default="normal", metadata={"choices": ("normal", "uniform")})
    # mlp / goodfellow hidden widths (G in order from z, D in order from x); None: the arch default.
    g_hidden: Optional[tuple[int, ...]] = None
    d_hidden: Optional[tuple[int, ...]] = None
    # mlp hidden activation (Roth's code: tanh).
    mlp_activation: str = field(default="tanh", metadata={"choices": ("tanh", "relu", "leaky_relu")})
    # Negative slope of every leaky ReLU (DCGAN D, mlp with leaky_relu).
    leaky_slope: float = field(default=0.2, metadata={"min": 0.0, "max": 1.0})
    # BatchNorm in G's hidden layers / in D's hidden layers except the first (resnet: in every residual block, and
    # before G's output conv); None: the arch default.
    g_batchnorm: Optional[bool] = None
    d_batchnorm: Optional[bool] = None
    # dcgan D: BatchNorm on D's input images, before its first conv (NTGAN 6.3: "When combining SNGAN with NT we
    # achieved the best results when batch-normalizing the inputs to the discriminator").
    d_input_batchnorm: bool = False
    # goodfellow D: pieces per maxout unit (1 turns maxout into plain linear + ReLU).
    maxout_pieces: int = field(default=5, metadata={"min": 1})
    # goodfellow D dropout: rate on D's input and on its hidden layers (mnist.yaml: 0.2 and 0.5).
    d_input_dropout: float = field(default=0.2, metadata={"min": 0.0, "max": 0.99})
    d_dropout: float = field(default=0.5, metadata={"min": 0.0, "max": 0.99})
    # dcgan: channels of G's last hidden layer and D's first layers; M = width * 2**(number of upsamplings),
    # i.e. 512 for 32x32 with 64.
    dcgan_width: int = field(default=64, metadata={"min": 1})
    # dcgan G's channels: the FC layer's output, then each upsampling's (one more number than G has
    # upsamplings: 3 for 28x28, 4 for 32x32); None: dcgan_width * 2**k halving down to dcgan_width (Table 1's
    # [512, 256, 128, 64] at 32x32). NTGAN Table 4 (f) uses [64, 64, 64, 64].
    dcgan_g_filters: Optional[tuple[int, ...]] = None
    # dcgan hidden activations: relu (Table 1: ReLU in G, leaky ReLU in D) or tanh (both; NTGAN Table 4 (b)).
    dcgan_activation: str = field(default="relu", metadata={"choices": ("relu", "tanh")})
    # resnet: Gulrajani et al.'s dim (64 in their 64x64 ResNet): G's channels 8*width (the linear layer's output)
    # -> 8, 4, 2, 1 * width through its four up blocks; D's width after its input conv -> 2, 4, 8, 8 * width.
    resnet_width: int = field(default=64, metadata={"min": 1})
    # Spectral normalization (Miyato et al. 2018) on every linear / conv layer of D.
    spectral_norm: bool = False
    # Weight init: "paper" (each architecture's published init) or "torch" (PyTorch's defaults).
    init: str = field(default="paper", metadata={"choices": ("paper", "torch")})
    # mlp / goodfellow G's output-layer bias at a fresh start: zero, or "marginals": the training data's
    # per-feature means through the inverse of G's output activation (Goodfellow et al.'s mnist.yaml:
    # init_sigmoid_bias_from_marginals).
    g_output_bias: str = field(default="zero", metadata={"choices": ("zero", "marginals")})
    # NTGAN noise generator: G's architecture with widths divided by this, output scale * tanh.
    noise_width_divisor: int = field(default=8, metadata={"min": 1})
    noise_output_scale: float = field(default=2.0, metadata=NONNEG_F32)
    # DFM denoiser on D's penultimate features: hidden width (None: = feature width; must be >= it) and
    # number of hidden layers.
    denoiser_hidden: Optional[int] = field(default=None, metadata={"min": 1})
    denoiser_depth: int = field(default=3, metadata={"min": 1})

    def __post_init__(self):
        for name in ("g_hidden", "d_hidden", "dcgan_g_filters"):
            v = getattr(self, name)
            if v is None:
                continue
            if not isinstance(v, (tuple, list)) or not v or not all(
                    isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in v):
                raise ConfigError(f"model.{name}: must be a non-empty list of positive ints, got {v!r}")
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        # a field the architecture does not read, set away from its default, would be recorded in config.yaml
        # and silently ignored
        for name, why in unread_fields(self.arch, self.mlp_activation, self.dcgan_activation).items():
            if getattr(self, name) != type(self).__dataclass_fields__[name].default:
                raise ConfigError(f"model.{name}: {why}")

    def resolved(self, key: str):
        """The field's value, or the architecture's default when the field is None."""
        v = getattr(self, key)
        return ARCH_DEFAULTS[self.arch][key] if v is None else v
