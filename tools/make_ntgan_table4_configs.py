"""Writes configs/ntgan-table4/: NTGAN's robustness study (section 3, Table 4) on Fashion-MNIST, each of the
seven hyperparameter settings (a)-(g) for the four models the paper compares in Figure 3: a standard GAN, a GAN
with Roth et al.'s gradient penalty (GAN+GP), SNGAN and NTGAN with lambda = 0.1.

    python tools/make_ntgan_table4_configs.py [--out configs/ntgan-table4]

tests/test_config.py checks every written file against Table 4 as the paper's text prints it.
"""
import argparse
from pathlib import Path

# Table 4, one row per setting: learning rate, BatchNorm in G, optimizer, activation, n_disc, G's filters at
# 32x32 (Table 1's [512, 256, 128, 64] is the default), samples.
TABLE4 = {
    "a": (2e-4, False, "adam", "relu", 1, (512, 256, 128, 64), 50_000),
    "b": (2e-4, True, "adam", "tanh", 1, (512, 256, 128, 64), 50_000),
    "c": (1e-3, True, "adam", "relu", 1, (512, 256, 128, 64), 50_000),
    "d": (1e-2, True, "sgd", "relu", 1, (512, 256, 128, 64), 50_000),
    "e": (2e-4, True, "adam", "relu", 5, (512, 256, 128, 64), 50_000),
    "f": (2e-4, True, "adam", "relu", 1, (64, 64, 64, 64), 50_000),
    "g": (2e-4, False, "adam", "relu", 1, (512, 256, 128, 64), 5_000),
}
DEFAULT_FILTERS = (512, 256, 128, 64)

METHODS = {
    "standard": ("a standard GAN (no stabilization)", "  name: gan\n  loss: minimax\n  g_loss: nonsaturating\n"),
    "gp": ("GAN+GP: Roth et al.'s JS regularizer, Algorithm 1's annealing (gamma0 = 2, alpha = 0.01)",
           "  name: roth\n  loss: minimax\n  g_loss: nonsaturating\n  roth:\n    penalty: js\n"
           "    schedule: anneal\n    gamma0: 2.0\n    alpha: 0.01\n"),
    "sngan": ("SNGAN: spectral normalization on every layer of D, no BatchNorm in D (Miyato et al.)",
              "  name: gan\n  loss: minimax\n  g_loss: nonsaturating\n"),
    "ntgan": ("NTGAN: noise generator (G's architecture / 8, output 2 tanh), penalty lambda ||eps||^2, "
              "lambda = 0.1 (section 3)",
              "  name: nt\n  loss: minimax\n  g_loss: nonsaturating\n  nt:\n    noise: generator\n    lam: 0.1\n"
              "    clean: true\n"),
}


def _num(x: float) -> str:
    return f"{x:.1e}".replace("e-0", "e-")


def config_text(row: str, method: str) -> str:
    lr, g_bn, optimizer, act, n_disc, filters, samples = TABLE4[row]
    what, method_yaml = METHODS[method]
    name = f"ntgan-fmnist-table4-{row}-{method}"
    g = filters[1:] if filters != DEFAULT_FILTERS else (256, 128, 64)  # 28x28: three of the four
    model = [f"  arch: dcgan          # Table 1 (28x28: G FC 7x7x{g[0]} -> {g[1]} -> {g[2]} -> 1, "
             f"D 64 -> 64 -> 128 -> FC)", "  latent_dim: 128"]
    if not g_bn:
        model.append("  g_batchnorm: false")
    if act != "relu":
        model.append(f"  dcgan_activation: {act}   # every hidden activation of G and D")
    if filters != DEFAULT_FILTERS:
        # 28x28 has one upsampling fewer than 32x32: Table 4's four numbers lose the first (the FC layer's)
        model.append(f"  dcgan_g_filters: [{', '.join(str(f) for f in filters[1:])}]   "
                     f"# Table 4 {list(filters)} at 32x32")
    if method == "sngan":
        model += ["  d_batchnorm: false", "  spectral_norm: true"]
    optim = [f"  optimizer: {optimizer}", f"  lr_g: {_num(lr)}", f"  lr_d: {_num(lr)}"]
    optim += ["  beta1: 0.5", "  beta2: 0.999"] if optimizer == "adam" else ["  momentum: 0.0"]
    optim.append("  batch_size: 64")
    return "\n".join([
        f"# NTGAN Table 4 setting ({row}) on Fashion-MNIST (the paper uses CIFAR-10, which is not shipped here): "
        f"learning rate {lr:g},",
        f"# BatchNorm in G {str(g_bn).lower()}, {optimizer.upper()}, activation {'tanh' if act == 'tanh' else 'ReLU / lReLU'}"
        f", n_disc {n_disc}, G filters {list(filters)}, {samples // 1000}K samples.",
        f"# Model: {what}.",
        "# Written by tools/make_ntgan_table4_configs.py; section 3: 100K generator iterations, mini-batch 64.",
        "model:", *model,
        "data:",
        "  name: fashion_mnist",
        f"  max_samples: {samples}   # Table 4's #Samples: the first {samples} of Fashion-MNIST's 60000",
        "optim:", *optim,
        "method:", method_yaml.rstrip("\n"),
        f"  d_steps: {n_disc}",
        "run:",
        f"  name: {name}",
        "  steps: 100000",
        "  log_every: 500",
        "  sample_every: 5000",
        "  checkpoint_every: 5000",
        "  # FID's and IS's formulas on fastgan's Fashion-MNIST classifier (not Inception: not comparable to Figure 3)",
        "  fd: true",
        "  fd_every: 2000",
        ""])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "configs" / "ntgan-table4"))
    out = Path(p.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    for row in TABLE4:
        for method in METHODS:
            (out / f"ntgan-fmnist-table4-{row}-{method}.yaml").write_text(config_text(row, method))
    print(f"wrote {len(TABLE4) * len(METHODS)} configs to {out}")


if __name__ == "__main__":
    main()
