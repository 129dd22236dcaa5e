"""tools/custom_op_overhead.py, the measurement behind the docs' figure for the custom ops' dispatcher cost, runs
both paths: the custom op twice (forward and backward, forward under no_grad), the eager path twice, each call
reaching the cpu kernels; it prints, it is not timed here."""
import torch

from fastgan.ops import _dispatch
from helpers import tool_module


def test_it_runs_both_paths_and_prints_their_difference(capsys, monkeypatch):
    tool = tool_module("custom_op_overhead.py", "custom_op_overhead")
    monkeypatch.setattr(tool, "_median_us", lambda f, n=2000: (f(), 1.0)[1])
    custom_calls = []
    op = torch.ops.fastgan.nt_losses
    monkeypatch.setattr(torch.ops.fastgan, "nt_losses", lambda *a: (custom_calls.append(1), op(*a))[1])
    before, threads = _dispatch.counts.get(("nt_losses", "cpu"), 0), torch.get_num_threads()
    tool.main()
    assert torch.get_num_threads() == threads
    out = capsys.readouterr().out
    assert "forward+backward: eager path" in out and "forward, no_grad" in out and "difference" in out
    assert len(custom_calls) == 2  # the eager path never goes through torch.ops
    assert _dispatch.counts.get(("nt_losses", "cpu"), 0) - before == 4
