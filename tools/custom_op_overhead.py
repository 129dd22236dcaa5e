"""What the torch.library dispatcher costs a fused op's call beyond fastgan's eager path (fastgan/ops/_eager.py):
fastgan.ops.nt_losses (its autograd.Function path) against the same arguments through
torch.ops.fastgan.nt_losses, N = 512 logits a side, the cpu backend, one thread; forward and backward, then a
forward under no_grad. Prints the median microseconds a call of each and their difference.

    python tools/custom_op_overhead.py
"""
import importlib
import statistics
import time

import torch

import fastgan
from fastgan.train import _threads  # set for the block and put back, as a run's run.threads

M = importlib.import_module("fastgan.ops.nt_losses")  # the module: fastgan.ops.nt_losses is the function


def _median_us(f, n: int = 2000) -> float:
    for _ in range(200):
        f()
    times = []
    for _ in range(15):
        start = time.perf_counter()
        for _ in range(n // 10):
            f()
        times.append((time.perf_counter() - start) / (n // 10) * 1e6)
    return statistics.median(times)


def main() -> None:
    with _threads(1):
        _compare()


def _compare() -> None:
    lr, lf = torch.randn(512, requires_grad=True), torch.randn(512, requires_grad=True)
    args = (lr, lf, None, 0.5, M.KINDS["d"], M.REDUCTIONS["mean"], False, "cpu")

    def eager():
        fastgan.ops.nt_losses(lr, lf, 0.5, backend="cpu").backward()

    def custom():
        torch.ops.fastgan.nt_losses(*args)[0].backward()

    def eager_forward():
        with torch.no_grad():
            fastgan.ops.nt_losses(lr, lf, 0.5, backend="cpu")

    def custom_forward():
        with torch.no_grad():
            torch.ops.fastgan.nt_losses(*args)

    for name, a, b in (("forward+backward", eager, custom), ("forward, no_grad", eager_forward, custom_forward)):
        ea, cu = _median_us(a), _median_us(b)
        print(f"{name}: eager path {ea:.1f} us, custom op {cu:.1f} us, difference {cu - ea:.1f} us")
    print("torch", torch.__version__)


if __name__ == "__main__":
    main()
