"""`fastgan sample RUN --out FILE`: draw from a finished run's generator (its checkpoint) into a PNG (an image
grid, or a scatter plot of points with the mixture's modes) or an .npz (the samples `x` and latents `z`)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from . import config as C
from ._atomic import NAME_MAX, replacing
from .crosstest import _read, load_run
from .run_commands import add_device_and_seed, cli_device, folder_arg, positive, run
from .run_folder import recorded_data_shape, run_info_path

_FORMATS = (".png", ".npz")


@torch.no_grad()
def draw(G: torch.nn.Module, n: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples, latents) of n draws from G in eval mode (BatchNorm's running statistics), in chunks of 1000."""
    G.eval()
    z = G.sample_latent(n, generator=generator, device=device)
    return torch.cat([G(z[i:i + 1000]) for i in range(0, n, 1000)]), z


def sample_run(run_dir, n: int = 64, *, device="cpu", seed: int = 0) -> dict:
    """{"x": n samples (images in [-1, 1] or points), "z": their latents, "config", "step"} from G in eval mode."""
    from .metrics._args import positive_int

    n = positive_int(n, "n")
    device = torch.device(device)
    state, cfg = _read(run_dir)
    m = load_run(run_dir, recorded_data_shape(run_dir), device, _state=(state, cfg),
                 shape_from=f"the data_shape that {run_info_path(run_dir)} records")
    x, z = draw(m.G, n, torch.Generator(device=device).manual_seed(seed), device)
    return {"x": x, "z": z, "config": cfg, "step": m.step, "run": str(run_dir)}


def _non_finite(x: torch.Tensor) -> int:
    """How many samples hold a NaN or an infinity."""
    return int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).sum())


def _check_out(out) -> Path:
    out = Path(out)
    if out.suffix.lower() not in _FORMATS:
        raise C.ConfigError(f"--out: must end in {' or '.join(_FORMATS)}, got {str(out)!r}")
    if len(out.name.encode()) > NAME_MAX:  # refused before the run is read and drawn
        raise C.ConfigError(f"--out: its file name is {len(out.name.encode())} bytes; a file system takes "
                            f"{NAME_MAX} at most")
    if out.is_dir():
        raise C.ConfigError(f"--out: {str(out)!r} is a folder; give a file in it")
    for parent in out.parents:  # the first that exists must be a folder: mkdir would say "File exists" late
        if os.path.lexists(parent):  # a dangling symbolic link too, which exists() does not see
            if not parent.is_dir():
                what = "a file" if parent.exists() else "a dangling symbolic link"
                raise C.ConfigError(f"--out: {str(parent)!r} is {what}, not a folder, so {str(out)!r} cannot be made")
            break
    return out


def write_samples(result: dict, out) -> Path:
    """Write sample_run's result to `out` (.png or .npz) atomically: a file already there is replaced whole or
    not at all."""
    from .data import mixtures
    from .logging_utils import save_image_grid, save_scatter

    out = _check_out(out)
    x, cfg = result["x"], result["config"]
    bad = _non_finite(x)
    if bad and out.suffix.lower() == ".png":  # a grid would draw NaN as black, a scatter plot would drop it
        raise ValueError(f"sample: the generator of {result.get('run', 'the run')} (step {result['step']}) made "
                         f"{bad} non-finite samples of {x.shape[0]} (eval mode); a PNG cannot show them: write an "
                         f".npz to look at them")
    if out.suffix.lower() == ".png":  # the PNG writers write a temporary file and rename it
        if x.dim() == 4:
            return save_image_grid(x, out)
        means = mixtures.means(cfg.data.name) if cfg.data.name in mixtures.MIXTURES else None
        return save_scatter(x, out, means=means, title=f"{cfg.run.name} step {result['step']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, x=x.cpu().numpy(), z=result["z"].cpu().numpy())
    return out


def _cmd_sample(args) -> int:
    def body():
        _check_out(args.out)  # before loading the run and drawing: a typo costs nothing
        r = sample_run(args.run, args.n, device=cli_device(args.device), seed=args.seed)
        out = write_samples(r, args.out)
        bad = _non_finite(r["x"])
        return (f"{r['x'].shape[0]} samples of {args.run} (step {r['step']}) written to {out}"
                + (f" ({bad} of them non-finite)" if bad else ""))
    return run("sample", body)


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "sample", help="draw samples from a finished run",
        description="Draw samples from a finished run's generator (eval mode, from its checkpoint) into a PNG "
                    "(image grid, or scatter plot of points) or an .npz (arrays x: samples, z: latents).")
    p.add_argument("run", type=folder_arg, help="run folder (with checkpoints/last.pt)")
    p.add_argument("--out", required=True, help="output file: .png or .npz (its missing parent folders are made)")
    p.add_argument("-n", type=positive, default=64, help="number of samples (64)")
    add_device_and_seed(p, "seed of the latents")
    p.set_defaults(func=_cmd_sample)
