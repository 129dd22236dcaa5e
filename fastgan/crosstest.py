"""`fastgan crosstest RUN_A RUN_B`: Roth et al.'s cross-testing (section 5.5) of two finished runs.

Loads each run's G and D from its checkpoint, draws generated samples from both, and classifies held-out real
samples and both models' samples with both discriminators (fastgan.metrics.cross_test). Held-out real samples:
the test split of mnist / fashion_mnist / cifar10, the `data.holdout` samples of other stored sets, fresh draws
of a built-in mixture.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping

import torch

from . import checkpoint as ckpt
from . import config as C
from .checkpoint import CheckpointError
from .run_commands import add_device_and_seed, cli_device, folder_arg, positive, run, strict_json
from .run_folder import CHECKPOINT, recorded_data_path
from .train import _checkpoint_config
from .train_resume import _first_problem

# data fields that do not change which distribution the samples come from (which stored samples each run
# trained on, max_samples and holdout, held_out_real takes into account)
_SAME_DATA_IGNORES = ("max_samples", "holdout", "keep_on_device", "nominal_size")


@dataclasses.dataclass
class RunModels:
    path: Path
    config: C.TrainConfig
    step: int
    G: torch.nn.Module
    D: torch.nn.Module


def _read(run_dir) -> tuple[dict, C.TrainConfig]:
    d = Path(run_dir)
    path = d / CHECKPOINT
    if not path.exists():  # say what was given instead of a run folder, not "<it>/checkpoints/last.pt not found"
        if d.is_file():
            raise FileNotFoundError(f"{d} is a file; give the run folder (the folder holding {CHECKPOINT})")
        raise FileNotFoundError(f"run folder not found: {d}" if not d.exists() else
                                f"{d} holds no {CHECKPOINT}: not a run folder, or a run not checkpointed yet")
    state = ckpt.load(path)
    cfg = _checkpoint_config(state, path)
    recorded = recorded_data_path(d)
    if cfg.data.path and recorded and not Path(cfg.data.path).is_absolute():
        # the file the run trained on, not one of the same relative name under the folder this command runs in
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=recorded))
    return state, cfg


def load_run(run_dir, data_shape, device="cpu", *, _state=None, shape_from: str = "") -> RunModels:
    """G and D of a run folder's checkpoint, on `device`, for data of sample shape `data_shape`. shape_from: where
    that shape was read, for the error when the checkpoint's weights do not fit it (a mismatch may be the shape's
    source's, e.g. a hand-edited run_info.json, not the checkpoint's)."""
    from .models import build_discriminator, build_generator

    path = Path(run_dir) / CHECKPOINT
    state, cfg = _state if _state is not None else _read(run_dir)
    shape = f" for samples of shape {tuple(data_shape)}" + (f" ({shape_from})" if shape_from else "")
    try:
        G, D = build_generator(cfg.model, data_shape), build_discriminator(cfg.model, data_shape)
    except ValueError as e:
        # a shape the config's model cannot take (a hand-edited run_info.json): "data_shape: arch 'dcgan' needs
        # images" named neither the shape's source nor the checkpoint
        raise CheckpointError(f"checkpoint {path}: its config's model cannot be built{shape}: {e}") from None
    except (MemoryError, RuntimeError) as e:
        from .train_cli import _out_of_memory

        why = _out_of_memory(e)
        if why is None:
            raise
        # the models' size, not the draws': the commands' advice ("draw fewer samples (-n)") was wrong here
        raise CheckpointError(f"checkpoint {path}: out of memory building its config's model{shape}: {why}") \
            from None
    modules = state["method"].get("modules") if isinstance(state["method"], dict) else None
    for name, module in (("G", G), ("D", D)):
        try:
            saved = modules[name]
            if isinstance(saved, Mapping):
                # load_state_dict casts what it copies: an int64 weight was used as whole numbers, a complex one lost
                # its imaginary part (torch's two-line UserWarning), where a resume refuses the checkpoint
                ckpt.check_module_state(path, name, saved, module)
            module.load_state_dict(saved)
        except CheckpointError:
            raise
        except (TypeError, KeyError, RuntimeError) as e:
            why = f"no entry {e}" if isinstance(e, KeyError) else _first_problem(e)
            raise CheckpointError(f"checkpoint {path}: its {name} does not fit its config's model{shape}: {why}") \
                from None
    return RunModels(Path(run_dir), cfg, state["step"], G.to(device), D.to(device))


def _data_key(cfg: C.TrainConfig) -> dict:
    from .data import idx, mixtures

    d = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in _SAME_DATA_IGNORES}
    # a default spelled out is the same data as the default left out
    if d["name"] in mixtures.MIXTURES and d["mixture_std"] is None:
        d["mixture_std"] = mixtures.default_std(d["name"])
    if d["name"] == "fashion_mnist" and d["path"] is None:
        d["path"] = idx.FASHION_MNIST_DIR
    if d["path"] is not None:  # one file or folder however spelled ('x/', './x', absolute)
        d["path"] = os.path.abspath(d["path"])
    return d


def held_out_real(data_cfg, n: int, device, generator: torch.Generator, *, others=(),
                  command: str = "crosstest") -> tuple[torch.Tensor, str]:
    """Up to n real samples that no model was trained on, and where they came from. others: the data configs of
    other runs on the same data (they may hold out other samples: data.holdout, data.max_samples); command
    begins the errors."""
    from .data import TEST_SPLIT_DATASETS, build_dataset, has_test_split, load_test_split, mixtures

    if data_cfg.name in mixtures.MIXTURES:
        return build_dataset(data_cfg, device).sample(n, generator), f"{n} fresh draws of {data_cfg.name}"
    if data_cfg.split == "train" and has_test_split(data_cfg):
        x = load_test_split(data_cfg, device, n)
        return x, f"{data_cfg.name} test split ({x.shape[0]} samples)"
    cfgs = [data_cfg, *others]
    # run i trained on its stored samples [0, end_i - holdout_i), end_i = min(data.max_samples, stored): none of
    # the runs saw [max_i(end_i - holdout_i), stored). Where every run set max_samples, stored samples past
    # max(max_samples) + n are not needed (if fewer are stored, all of them are loaded and the ends are exact)
    most = max(c.max_samples for c in cfgs) + n if all(c.max_samples for c in cfgs) else None
    ds = build_dataset(dataclasses.replace(data_cfg, max_samples=most, holdout=0), device)
    ends = [min(c.max_samples or len(ds), len(ds)) for c in cfgs]
    start = max(e - c.holdout for e, c in zip(ends, cfgs))
    if start >= len(ds):
        if not any(c.holdout for c in cfgs) and all(e == len(ds) for e in ends):
            why = (f"data.split={data_cfg.split!r} trains on the test split" if data_cfg.name in TEST_SPLIT_DATASETS
                   and data_cfg.split != "train" else f"data.name={data_cfg.name!r} has no held-out real samples")
            raise ValueError(f"{command}: {why}: use a data set with a test split ({', '.join(TEST_SPLIT_DATASETS)}, "
                             f"data.path a folder, data.split=train) or train with data.holdout or data.max_samples "
                             "below the stored samples")
        raise ValueError(f"{command}: no stored sample is held out of both runs' training (data.max_samples "
                         f"{' vs '.join(str(c.max_samples) for c in cfgs)}, data.holdout "
                         f"{' vs '.join(str(c.holdout) for c in cfgs)})")
    x = torch.cat(list(ds.hold_out(len(ds) - start)[1].batches(4096)))[:n]
    if data_cfg.name == "npz" and data_cfg.value_range is None and ds.kind == "images":
        x = _as_the_runs_scaled(x, ds, cfgs, device, command)
    holdouts = " and ".join(sorted({str(c.holdout) for c in cfgs}, key=int))
    past = [str(c.max_samples) for c, e in zip(cfgs, ends) if c.max_samples and e < len(ds)]
    kept = " and ".join(([f"data.holdout={holdouts}"] if any(c.holdout for c in cfgs) else [])
                        + ([f"past data.max_samples={' and '.join(sorted(set(past), key=int))}"] if past else []))
    whose = "both runs'" if others else "the run's"
    return x, f"stored samples held out of {whose} training ({kept}: {x.shape[0]} from index {start})"


def _as_the_runs_scaled(x, ds, cfgs, device, command: str):
    """x (samples of ds) mapped to [-1, 1] as the runs mapped theirs. Float npz images without data.value_range are
    mapped by the values loaded ((0, 1) unless one is negative): more samples than a run loaded can hold a negative
    one, and the held-out samples then came scaled unlike those it trained on."""
    from .data import build_dataset

    maps = [(own.scale, own.offset) for own in
            (build_dataset(dataclasses.replace(c, holdout=0), device) for c in cfgs)]
    if len(set(maps)) > 1:
        raise ValueError(f"{command}: the runs mapped their stored values to [-1, 1] differently (scale and offset "
                         f"{' vs '.join(f'{s:g}, {o:g}' for s, o in maps)}: the samples their data.max_samples took "
                         "are all >= 0 for one, not for the other); set data.value_range")
    scale, offset = maps[0]
    if (scale, offset) == (ds.scale, ds.offset):
        return x
    return (x - ds.offset) / ds.scale * scale + offset


def real_threshold(cfg: C.TrainConfig, run) -> float:
    """The logit above which the run's D calls a sample real: its loss's indifference point (0 for the minimax
    GAN Roth et al. cross-test); a ValueError for a WGAN critic, which has none."""
    from .methods.losses import decision_threshold

    t = decision_threshold(cfg.method.loss, cfg.method.f_divergence)
    if t is None:
        raise ValueError(f"crosstest: {run} was trained with method.loss={cfg.method.loss!r}: its critic's scores "
                         "are defined up to an added constant, with no logit that separates real from fake, so its "
                         "discriminator cannot classify samples (cross-testing needs a classifier: minimax, "
                         "least_squares or fgan)")
    return t


def cross_test_runs(run_a, run_b, *, samples: int = 10000, device="cpu", seed: int = 0) -> dict:
    """Cross-test two run folders trained on the same data; the result of fastgan.metrics.cross_test plus
    "runs", "steps" and "real" (where the real samples came from). Each D calls a sample real above its own
    loss's threshold (real_threshold)."""
    from .metrics import cross_test
    from .metrics._args import positive_int

    samples = positive_int(samples, "samples")
    device = torch.device(device)
    read = [_read(run_a), _read(run_b)]
    cfgs = [cfg for _, cfg in read]
    keys = [_data_key(c) for c in cfgs]
    if keys[0] != keys[1]:
        differ = ["name"] if keys[0]["name"] != keys[1]["name"] else [k for k in keys[0] if keys[0][k] != keys[1][k]]
        diff = [f"data.{k}: {keys[0][k]!r} vs {keys[1][k]!r}" for k in differ]
        raise ValueError(f"crosstest: {run_a} and {run_b} were trained on different data ({'; '.join(diff)})")
    thresholds = (real_threshold(cfgs[0], run_a), real_threshold(cfgs[1], run_b))
    g = torch.Generator(device=device).manual_seed(seed)
    real, where = held_out_real(cfgs[0].data, samples, device, g, others=[cfgs[1].data])
    shape = tuple(real.shape[1:])
    a, b = (load_run(run, shape, device, _state=r, shape_from=f"those of the real samples: {where}")
            for run, r in ((run_a, read[0]), (run_b, read[1])))
    fakes, z = [], None
    same_prior = (a.G.latent_dim, a.G.latent_dist) == (b.G.latent_dim, b.G.latent_dist)
    for m in (a, b):
        m.G.eval()
        with torch.no_grad():
            # one set of latents for both when their priors agree: the comparison is then not also one of draws
            # (a run cross-tested against itself ties), and swapping the runs swaps the results
            if z is None or not same_prior:
                z = m.G.sample_latent(samples, generator=g, device=device)
            fakes.append(torch.cat([m.G(z[i:i + 1024]) for i in range(0, samples, 1024)]))
        if not bool(torch.isfinite(fakes[-1]).all()):
            raise ValueError(f"crosstest: the generator of {m.path} (step {m.step}) made non-finite samples "
                             f"(eval mode); it cannot be cross-tested")
    out = cross_test(a.D, fakes[0], b.D, fakes[1], real, thresholds=thresholds,
                     names=(f"the discriminator of {a.path}", f"the discriminator of {b.path}"))
    out.update(runs=[str(a.path), str(b.path)], steps=[a.step, b.step], real=where, generated=samples)
    return out


def format_report(r: dict) -> str:
    m1, m2 = r["model1"], r["model2"]
    rows = [("own D: real called real (TP)", "tp"), ("own D: real called fake (FN)", "fn"),
            ("own D: own samples called real (FP)", "fp"), ("own D: own samples called fake (TN)", "tn"),
            ("cross-testing FP: the other's samples called real", "cross_fp")]
    w = max(len(t) for t, _ in rows)
    lines = [f"cross-testing (Roth et al. 2017, 5.5): real: {r['real']}; {r['generated']} generated per model",
             *[f"model {i}: {r['runs'][i - 1]} (step {r['steps'][i - 1]})" + _threshold_note(r[f"model{i}"])
               for i in (1, 2)],
             f"{'':{w}}  model 1  model 2"]
    se = {"tp": "tp_se", "fn": "tp_se", "fp": "fp_se", "tn": "fp_se", "cross_fp": "cross_fp_se"}
    lines[-1] += "   (± standard error)"
    lines += [f"{t:{w}}  {m1[k]:7.4f}  {m2[k]:7.4f}   (± {m1[se[k]]:.4f}, ± {m2[se[k]]:.4f})" for t, k in rows]
    better = r["better"]
    lines.append("better model (lower cross-testing FP, then FN): "
                 + (f"{better} ({r['runs'][better - 1]})" if better else "a tie"))
    diff, dse = abs(m1["cross_fp"] - m2["cross_fp"]), r["cross_fp_difference_se"]
    if diff > 0:
        lines.append(f"cross-testing FP difference {diff:.4f} ± {dse:.4f} (standard error): "
                     + ("more than two standard errors" if diff > 2 * dse else
                        "within two standard errors, not a clear difference (more --samples narrow it)"))
    lines += [f"warning: {w}" for w in r.get("warnings", ())]
    return "\n".join(lines)


def _threshold_note(m: dict) -> str:
    t = m.get("threshold", 0.0)
    return f"; real: a logit > {t:g} (its loss's indifference point)" if t else ""


def _cmd_crosstest(args) -> int:
    def body():
        r = cross_test_runs(args.run_a, args.run_b, samples=args.samples, device=cli_device(args.device),
                            seed=args.seed)
        return strict_json(r) if args.json else format_report(r)
    return run("crosstest", body)


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "crosstest", help="Roth et al.'s cross-testing of two runs' discriminators",
        description="Cross-test two finished runs trained on the same data (Roth et al. 2017, section 5.5): each "
                    "D classifies held-out real samples, its own G's samples and the other G's samples; the D "
                    "that calls fewer of the other's samples real defines the better model.")
    p.add_argument("run_a", type=folder_arg, help="run folder (with checkpoints/last.pt), e.g. the unregularized run")
    p.add_argument("run_b", type=folder_arg, help="the other run folder, e.g. the regularized run")
    p.add_argument("--samples", type=positive, default=10000, help="real and generated samples per model (10000)")
    add_device_and_seed(p, "seed of the latents and of mixture draws")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_crosstest)
