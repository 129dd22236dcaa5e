"""`fastgan eval RUN`: sample-quality scores of a finished run's generator, from its checkpoint.

Fashion-MNIST runs: Fréchet distance to the test split and classifier score (FID's and the Inception score's
formulas on fastgan's shipped classifier, fastgan.metrics.fmnist_scores); mixture runs: mode coverage,
high-quality fraction and KL of the mode histogram (fastgan.metrics.mode_metrics).
"""
from __future__ import annotations

import torch

from .crosstest import _read, held_out_real, load_run
from .run_commands import add_device_and_seed, cli_device, folder_arg, positive, run, strict_json
from .sample import draw


def evaluate_run(run_dir, *, samples: int = 10000, device="cpu", seed: int = 0) -> dict:
    """Scores of `samples` draws from a run folder's generator; "run", "step", "data", "generated" and, for
    Fashion-MNIST, "real" (where the real samples came from: the test split when the run trained on
    data.split=train, else its data.holdout images) beside the scores."""
    from .data import mixtures
    from .metrics import fmnist_scores, load_fmnist_classifier, mode_metrics
    from .metrics._args import positive_int

    samples = positive_int(samples, "samples")
    device = torch.device(device)
    state, cfg = _read(run_dir)
    d = cfg.data
    g = torch.Generator(device=device).manual_seed(seed)
    if d.name in mixtures.MIXTURES:
        means = mixtures.means(d.name, device=device)
        shape, real = (means.shape[1],), None
        shape_from = f"from the dimension of {d.name}'s modes"
    elif d.name == "fashion_mnist":
        if samples < 20:
            raise ValueError(f"samples (--samples): must be >= 20 for a Fashion-MNIST run (the classifier score's 10 "
                             f"parts of at least 2), got {samples}")
        # real images G never trained on: the test split, or the run's data.holdout
        real, where = held_out_real(d, samples, device, g, command="eval")
        shape, shape_from = tuple(real.shape[1:]), f"those of the real samples: {where}"
    else:
        raise ValueError(f"eval: no score for data.name={d.name!r}: fastgan eval scores fashion_mnist runs "
                         f"(its classifier) and the mixtures {', '.join(mixtures.MIXTURES)}")
    m = load_run(run_dir, shape, device, _state=(state, cfg), shape_from=shape_from)
    x, _ = draw(m.G, samples, g, device)
    out = {"run": str(m.path), "step": m.step, "data": d.name, "generated": samples}
    if real is None:
        mm = mode_metrics(x, means, mixtures.quality_std(d.name, d.mixture_std))
        out.update({k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in mm.items()})
        return out
    if not bool(torch.isfinite(x).all()):
        # fmnist_scores would refuse them as "samples: ...", naming no run (crosstest's wording); a mixture run's
        # non-finite samples are scored above, as low quality (mode_metrics)
        raise ValueError(f"eval: the generator of {m.path} (step {m.step}) made non-finite samples (eval mode); it "
                         f"cannot be scored")
    net = load_fmnist_classifier(device)
    res = fmnist_scores(x, real, classifier=net)
    # as many parts as G's score, fewer if the held-out images are few (each part needs 2)
    real_score = fmnist_scores(real, classifier=net, splits=max(1, min(10, real.shape[0] // 2)))
    out.update(real=where, fd=res["fd"], classifier_score=res["score"], classifier_score_std=res["score_std"],
               real_classifier_score=real_score["score"])
    return out


def format_report(r: dict) -> str:
    lines = [f"run: {r['run']} (step {r['step']}), data {r['data']}, {r['generated']} generated samples"]
    if "fd" in r:
        lines += [f"real: {r['real']}",
                  f"Fréchet distance (fastgan's Fashion-MNIST classifier features): {r['fd']:.4f}",
                  f"classifier score: {r['classifier_score']:.4f} ± {r['classifier_score_std']:.4f} "
                  f"(the real images': {r['real_classifier_score']:.4f})",
                  "(FID's and the Inception score's formulas on fastgan's classifier: comparable between fastgan "
                  "runs, not with Inception-based numbers)"]
    else:
        lines += [f"modes covered: {r['modes']} of {r['num_modes']}",
                  f"high-quality samples (within 3 std of a mode): {r['high_quality']:.4f}",
                  f"KL(mode histogram || uniform): {r['kl_modes']:.4f}"]
    return "\n".join(lines)


def _cmd_eval(args) -> int:
    def body():
        r = evaluate_run(args.run, samples=args.samples, device=cli_device(args.device), seed=args.seed)
        return strict_json(r) if args.json else format_report(r)
    return run("eval", body)


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="sample-quality scores of a finished run",
        description="Score a finished run's generator from its checkpoint: Fashion-MNIST runs get the Fréchet "
                    "distance to the test split and the classifier score (FID's and the Inception score's formulas "
                    "on fastgan's shipped Fashion-MNIST classifier), mixture runs their mode coverage.")
    p.add_argument("run", type=folder_arg, help="run folder (with checkpoints/last.pt)")
    p.add_argument("--samples", type=positive, default=10000,
                   help="generated (and at most as many real) samples: >= 20 for Fashion-MNIST runs, >= 1 for "
                        "mixtures (10000, as NTGAN)")
    add_device_and_seed(p, "seed of the latents")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_eval)
