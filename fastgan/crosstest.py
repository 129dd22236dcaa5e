"""`fastgan crosstest RUN_A RUN_B`: Roth et al.'s cross-testing (section 5.5) of two finished runs.

Loads each run's G and D from its checkpoint, draws generated samples from both, and classifies held-out real
samples and both models' samples with both discriminators (fastgan.metrics.cross_test). Held-out real samples:
the test split of mnist / fashion_mnist / cifar10, the `data.holdout` samples of other stored sets, fresh draws
of a built-in mixture.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import config as C
from .checkpoint import CheckpointError

CHECKPOINT = Path("checkpoints") / "last.pt"
# data fields that do not change which distribution the samples come from
_SAME_DATA_IGNORES = ("max_samples", "holdout", "keep_on_device", "nominal_size")
_TEST_SPLITS = ("mnist", "fashion_mnist", "cifar10")


@dataclasses.dataclass
class RunModels:
    path: Path
    config: C.TrainConfig
    step: int
    G: torch.nn.Module
    D: torch.nn.Module


def _read(run_dir) -> tuple[dict, C.TrainConfig]:
    path = Path(run_dir) / CHECKPOINT
    state = ckpt.load(path)
    try:
        return state, C.from_dict(state["config"])
    except C.ConfigError as e:
        raise CheckpointError(f"checkpoint {path} holds an invalid config: {e}") from None


def load_run(run_dir, data_shape, device="cpu", *, _state=None) -> RunModels:
    """G and D of a run folder's checkpoint, on `device`, for data of sample shape `data_shape`."""
    from .models import build_discriminator, build_generator

    path = Path(run_dir) / CHECKPOINT
    state, cfg = _state if _state is not None else _read(run_dir)
    G, D = build_generator(cfg.model, data_shape), build_discriminator(cfg.model, data_shape)
    modules = state["method"].get("modules") if isinstance(state["method"], dict) else None
    for name, module in (("G", G), ("D", D)):
        try:
            module.load_state_dict(modules[name])
        except (TypeError, KeyError, RuntimeError) as e:
            why = f"no entry {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
            raise CheckpointError(f"checkpoint {path}: its {name} does not fit its config's model: {why}") from None
    return RunModels(Path(run_dir), cfg, state["step"], G.to(device), D.to(device))


def _data_key(cfg: C.TrainConfig) -> dict:
    d = dataclasses.asdict(cfg.data)
    return {k: v for k, v in d.items() if k not in _SAME_DATA_IGNORES}


def held_out_real(data_cfg, n: int, device, generator: torch.Generator) -> tuple[torch.Tensor, str]:
    """Up to n real samples no model was trained on, and where they came from."""
    from .data import build_dataset, mixtures

    if data_cfg.name in mixtures.MIXTURES:
        return build_dataset(data_cfg, device).sample(n, generator), f"{n} fresh draws of {data_cfg.name}"
    if data_cfg.name in _TEST_SPLITS and (data_cfg.path is None or Path(data_cfg.path).is_dir()):
        ds = build_dataset(dataclasses.replace(data_cfg, split="test", max_samples=n, holdout=0), device)
        where = f"{data_cfg.name} test split"
    elif data_cfg.holdout:
        ds = build_dataset(data_cfg, device).held_out
        where = f"the data.holdout={data_cfg.holdout} samples held out of training"
    else:
        raise ValueError(f"crosstest: data.name={data_cfg.name!r} has no held-out real samples: use a data set with "
                         f"a test split ({', '.join(_TEST_SPLITS)}, data.path a folder) or train with data.holdout")
    x = torch.cat(list(ds.batches(4096)))[:n]
    return x, f"{where} ({x.shape[0]} samples)"


def cross_test_runs(run_a, run_b, *, samples: int = 10000, device="cpu", seed: int = 0) -> dict:
    """Cross-test two run folders trained on the same data; the result of fastgan.metrics.cross_test plus
    "runs", "steps" and "real" (where the real samples came from)."""
    from .metrics import cross_test
    from .metrics._args import positive_int

    samples = positive_int(samples, "samples")
    device = torch.device(device)
    read = [_read(run_a), _read(run_b)]
    cfgs = [cfg for _, cfg in read]
    if _data_key(cfgs[0]) != _data_key(cfgs[1]):
        diff = [f"data.{k}: {v!r} vs {_data_key(cfgs[1])[k]!r}" for k, v in _data_key(cfgs[0]).items()
                if _data_key(cfgs[1])[k] != v]
        raise ValueError(f"crosstest: {run_a} and {run_b} were trained on different data ({'; '.join(diff)})")
    g = torch.Generator(device=device).manual_seed(seed)
    real, where = held_out_real(cfgs[0].data, samples, device, g)
    shape = tuple(real.shape[1:])
    a, b = (load_run(run, shape, device, _state=r) for run, r in ((run_a, read[0]), (run_b, read[1])))
    fakes = []
    for m in (a, b):
        m.G.eval()
        with torch.no_grad():
            z = m.G.sample_latent(samples, generator=g, device=device)
            fakes.append(torch.cat([m.G(z[i:i + 1024]) for i in range(0, samples, 1024)]))
    out = cross_test(a.D, fakes[0], b.D, fakes[1], real)
    out.update(runs=[str(a.path), str(b.path)], steps=[a.step, b.step], real=where, generated=samples)
    return out


def format_report(r: dict) -> str:
    m1, m2 = r["model1"], r["model2"]
    rows = [("own D: real called real (TP)", "tp"), ("own D: real called fake (FN)", "fn"),
            ("own D: own samples called real (FP)", "fp"), ("own D: own samples called fake (TN)", "tn"),
            ("cross-testing FP: the other's samples called real", "cross_fp")]
    w = max(len(t) for t, _ in rows)
    lines = [f"cross-testing (Roth et al. 2017, 5.5): real: {r['real']}; {r['generated']} generated per model",
             f"model 1: {r['runs'][0]} (step {r['steps'][0]})", f"model 2: {r['runs'][1]} (step {r['steps'][1]})",
             f"{'':{w}}  model 1  model 2"]
    lines += [f"{t:{w}}  {m1[k]:7.4f}  {m2[k]:7.4f}" for t, k in rows]
    better = r["better"]
    lines.append("better model (lower cross-testing FP, then FN): "
                 + (f"{better} ({r['runs'][better - 1]})" if better else "a tie"))
    return "\n".join(lines)


def _cmd_crosstest(args) -> int:
    from .train import _device

    try:
        if not C._DEVICE.match(args.device):
            raise C.ConfigError(f"--device: must be one of ('cpu', 'cuda', 'cuda:N', 'auto'), got {args.device!r}")
        try:
            device = _device(args.device)
        except C.ConfigError as e:
            raise C.ConfigError(str(e).replace("run.device", "--device")) from None
        r = cross_test_runs(args.run_a, args.run_b, samples=args.samples, device=device, seed=args.seed)
    except C.ConfigError as e:
        print(f"fastgan crosstest: error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, OSError, ValueError, TypeError) as e:
        print(f"fastgan crosstest: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "crosstest", help="Roth et al.'s cross-testing of two runs' discriminators",
        description="Cross-test two finished runs trained on the same data (Roth et al. 2017, section 5.5): each "
                    "D classifies held-out real samples, its own G's samples and the other G's samples; the D "
                    "that calls fewer of the other's samples real defines the better model.")
    p.add_argument("run_a", help="run folder (with checkpoints/last.pt), e.g. the unregularized run")
    p.add_argument("run_b", help="the other run folder, e.g. the regularized run")
    p.add_argument("--samples", type=int, default=10000, help="real and generated samples per model (10000)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latents and of mixture draws")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_crosstest)
