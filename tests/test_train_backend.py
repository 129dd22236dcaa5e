"""run.backend: the trainer runs every fused op on it (over FASTGAN_BACKEND), checks it against run.device before
the run folder is made, may change it on resume, and records what it asked for (run_info.json) and what ran
(TrainResult.backends, status.json, the command's summary)."""
import json

import pytest

import fastgan
from fastgan import checkpoint as ckpt
from fastgan.config import ConfigError
from fastgan.ops import _dispatch
from fastgan.cli import main

TINY = ["optim.batch_size=16", "model.g_hidden=[16]", "model.d_hidden=[16,16]", "run.log_every=1",
        "run.sample_every=0", "run.checkpoint_every=0", "run.num_samples=16", "run.progress=off",
        "method.roth.mode=mlp"]


def _train(d, *overrides, steps=2, resume=False):
    return fastgan.train(None, overrides=[*TINY, f"run.steps={steps}", f"run.dir={d}", *overrides], resume=resume)


def test_the_run_uses_it_and_says_so(tmp_path):
    r = _train(tmp_path / "a")
    assert r.backends == {"grad_norm_penalty_terms": ("cpu",)} and r.penalty_modes == ("mlp",)
    info = json.loads((tmp_path / "a" / "run_info.json").read_text())
    assert info["backend"] == "auto" and info["fastgan"] == fastgan.__version__
    r = _train(tmp_path / "b", "run.backend=reference")
    assert r.backends == {"grad_norm_penalty_terms": ("reference",)}
    assert json.loads((tmp_path / "b" / "status.json").read_text())["backends"] == \
        {"grad_norm_penalty_terms": ["reference"]}
    assert json.loads((tmp_path / "b" / "run_info.json").read_text())["backend"] == "run.backend='reference'"
    assert _dispatch._overrides == []  # the process's automatic selection is back


def test_it_wins_over_the_environment_and_may_change_on_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", "reference")
    d = tmp_path / "r"
    r = _train(d, "run.backend=cpu")
    assert r.backends == {"grad_norm_penalty_terms": ("cpu",)}
    r = _train(d, steps=4, resume=True)  # the config's run.backend is auto again: FASTGAN_BACKEND's
    assert r.backends == {"grad_norm_penalty_terms": ("reference",)} and r.start_step == 2
    assert json.loads((d / "run_info.json").read_text())["backend"] == "FASTGAN_BACKEND='reference'"
    assert ckpt.load(d / "checkpoints" / "last.pt")["fastgan"] == fastgan.__version__


def test_one_that_cannot_run_on_the_device_is_a_config_error_before_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", "cpu")  # runs: the field's own check is what fails
    with pytest.raises(ConfigError, match=r"^run\.backend='cuda': cannot run on cpu \(run\.device\): the cuda "
                                          r"backend needs CUDA tensors"):
        _train(tmp_path / "r", "run.backend=cuda")
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match=r"^run\.backend: must be one of \('auto', 'reference', 'cpu', 'cuda', "
                                          r"'triton'\), got 'fast'"):
        _train(tmp_path / "r", "run.backend=fast")
    assert not (tmp_path / "r").exists()


def test_the_config_field_lists_every_backend():
    import dataclasses

    from fastgan.config import RunConfig

    meta = {f.name: f.metadata for f in dataclasses.fields(RunConfig)}["backend"]
    assert meta["choices"] == ("auto", *_dispatch.BACKENDS)


def test_it_holds_the_run_s_thread_only(tmp_path, monkeypatch):
    """run.backend was a use_backend block, which is process-wide: two runs in two threads, run.backend=reference
    and run.backend=cpu, both ran on the block opened last (an audit of threads, 2026-12-07). Now another thread's
    ops resolve as they would without the run."""
    import sys
    import threading

    train_mod = sys.modules["fastgan.train"]  # fastgan.train is the function
    monkeypatch.delenv("FASTGAN_BACKEND", raising=False)
    real_run, seen = train_mod._Run.run, []

    def run(self):  # inside the run's blocks
        other = threading.Thread(target=lambda: seen.append(_dispatch.requested_backend()))
        other.start()
        other.join()
        seen.append(_dispatch.requested_backend())
        return real_run(self)

    monkeypatch.setattr(train_mod._Run, "run", run)
    with fastgan.ops.use_backend("cpu"):  # a caller's block still reaches the other thread, the run wins in its own
        r = _train(tmp_path / "a", "run.backend=reference")
    assert seen == [("cpu", "use_backend('cpu')"), ("reference", "run.backend='reference'")]
    assert r.backends == {"grad_norm_penalty_terms": ("reference",)}


def test_the_command_names_the_backends_that_ran(tmp_path, capsys):
    args = ["train", "--set", *TINY, "run.steps=2", f"run.dir={tmp_path / 'r'}", "run.backend=reference"]
    assert main(args) == 0
    assert "penalty gradients: mlp; ops on reference: grad_norm_penalty_terms); output in" in capsys.readouterr().out


def test_the_summary_names_a_backward_only_where_its_forward_did_not_run():
    from fastgan.train_cli import _backends_ran

    assert _backends_ran({}) == ""
    assert _backends_ran({"a": ("cpu",), "a_backward": ("cpu",), "b": ("cpu",), "b_backward": ("reference",)}) == \
        "ops on cpu: a, b; on reference: b_backward"


def test_a_callers_use_backend_block_is_checked_and_recorded_when_the_field_is_auto(tmp_path):
    with fastgan.ops.use_backend("cuda"):
        with pytest.raises(ConfigError, match=r"^use_backend\('cuda'\): cannot run on cpu \(run\.device\)"):
            _train(tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with fastgan.ops.use_backend("reference"):
        assert _train(tmp_path / "b").backends == {"grad_norm_penalty_terms": ("reference",)}
        assert _train(tmp_path / "c", "run.backend=cpu").backends == {"grad_norm_penalty_terms": ("cpu",)}
    assert json.loads((tmp_path / "b" / "run_info.json").read_text())["backend"] == "use_backend('reference')"


@pytest.mark.parametrize("device, backend", [("cpu", "cpu"), ("cpu", "reference"), ("cpu", "triton"),
                                             pytest.param("cuda", "cuda", marks=pytest.mark.cuda),
                                             pytest.param("cuda", "triton", marks=pytest.mark.cuda)])
def test_every_fused_op_of_a_run_runs_on_the_field_s_backend(tmp_path, device, backend):
    """Roth's closed-form penalty, NT's fused batches and losses and DFM's denoiser in one run, each op on
    run.backend and on nothing else."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    ok, why = _dispatch.status(backend, torch.device(device))
    if not ok:
        pytest.fail(f"the {backend} backend cannot run on {device}: {why}")
    r = _train(tmp_path / "r", f"run.device={device}", f"run.backend={backend}", "method.name=roth+nt+dfm",
               "method.nt.fused=true", "method.nt.noise=fixed", "model.denoiser_hidden=32", steps=3)
    assert r.step == 3 and all(names == (backend,) for names in r.backends.values()), r.backends
    assert {"grad_norm_penalty_terms", "noisy_clean_batch", "nt_losses", "denoiser_forward"} <= set(r.backends), \
        r.backends
