"""Trains the Fashion-MNIST classifier behind fastgan's Fréchet distance and classifier score
(fastgan/metrics/classifier.py) on the training split, reports its test accuracy and writes its weights.

    python tools/train_fmnist_classifier.py [--out fastgan/metrics/fmnist_classifier.pt] [--epochs 6]

Deterministic on a CPU for a given torch version and thread count (seed 0); the shipped file's SHA-256 is
recorded in classifier.py, so retraining means updating WEIGHTS_SHA256 there and the scores' history.
"""
import argparse
import hashlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastgan.metrics.classifier import FashionMNISTNet, labelled_fashion_mnist


@torch.no_grad()
def accuracy(net, x, y) -> float:
    net.eval()
    correct = sum(int((net(x[i:i + 2000]).argmax(1) == y[i:i + 2000]).sum()) for i in range(0, len(x), 2000))
    return correct / len(x)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="fastgan/metrics/fmnist_classifier.pt")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=128)
    a = p.parse_args()
    torch.manual_seed(0)
    x, y = labelled_fashion_mnist("train")
    xt, yt = labelled_fashion_mnist("test")
    net = FashionMNISTNet()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=a.epochs * (len(x) // a.batch))
    t0 = time.time()
    for epoch in range(a.epochs):
        net.train()
        perm = torch.randperm(len(x))
        for i in range(len(x) // a.batch):
            idx = perm[i * a.batch:(i + 1) * a.batch]
            xb = x[idx]
            flip = torch.rand(len(idx)) < 0.5  # left-right flips keep every class's identity
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f} test accuracy {accuracy(net, xt, yt):.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    out = Path(a.out)
    torch.save({k: v.clone() for k, v in net.state_dict().items()}, out)
    print(f"wrote {out}: sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}, "
          f"test accuracy {accuracy(net, xt, yt):.4f}, train accuracy {accuracy(net, x, y):.4f}")


if __name__ == "__main__":
    main()
