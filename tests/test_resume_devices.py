"""Resuming on another device than the checkpoint's (run.device is a resumable field).

Before 2026-12-03: a CUDA run's checkpoint resumed with run.device=cpu (what the error on a machine without a GPU
advises) failed as an "unusable random-generator state" (a CUDA generator's 16 bytes of Philox seed and offset
against a CPU generator's 5056), and the CUDA states were saved for every visible GPU and restored by index, so a
run resumed where fewer GPUs are visible failed ("tuple index out of range"), and a cuda:1 run resumed on cuda:0
took the state of a device it never drew from. torch.cuda's RNG calls are stood in for: no GPU here."""
import pytest
import torch

import fastgan
from fastgan import checkpoint as ckpt
from fastgan.train import ResumedOnAnotherDevice

TINY = ["optim.batch_size=16", "model.g_hidden=[16]", "model.d_hidden=[16,16]", "run.log_every=1",
        "run.sample_every=0", "run.checkpoint_every=0", "run.tensorboard=false", "run.progress=off"]


def _as_if_written_on_cuda(path, record_device_type: bool):
    s = torch.load(path, weights_only=True)
    s["rng"]["generators"]["train"] = torch.zeros(16, dtype=torch.uint8)  # CUDAGeneratorImpl::get_state
    s["rng"]["cuda_device"] = torch.zeros(16, dtype=torch.uint8)
    if record_device_type:
        s["rng"]["generator_devices"]["train"] = "cuda"
    else:  # a checkpoint from before the device types were recorded: told by the state's size
        del s["rng"]["generator_devices"]
        del s["rng"]["cuda_device"]
        s["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    s["config"]["run"]["device"] = "cuda"
    torch.save(s, path)


@pytest.mark.parametrize("record_device_type", [True, False])
def test_a_cuda_checkpoint_resumes_on_the_cpu_from_a_seeded_stream(tmp_path, record_device_type):
    r = fastgan.train(None, overrides=TINY + ["run.steps=2", f"run.dir={tmp_path / 'run'}"])
    path = r.out_dir / "checkpoints" / "last.pt"
    _as_if_written_on_cuda(path, record_device_type)
    saved = path.read_bytes()
    finals = []
    for _ in range(2):  # the same stream on every resume at this step
        path.write_bytes(saved)
        with pytest.warns(ResumedOnAnotherDevice, match=r"another kind of device than cpu \(run\.device\).*"
                                                        r"seeded by run\.seed and the step \(2\)"):
            out = fastgan.train(r.out_dir, resume=True, overrides=["run.steps=4", "run.device=cpu"])
        assert (out.start_step, out.step) == (2, 4)
        finals.append(torch.load(path, weights_only=True)["method"]["modules"]["G"])
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


def test_a_cpu_checkpoint_resumes_on_the_cpu_without_a_warning(tmp_path, recwarn):
    r = fastgan.train(None, overrides=TINY + ["run.steps=2", f"run.dir={tmp_path / 'run'}"])
    state = torch.load(r.out_dir / "checkpoints" / "last.pt", weights_only=True)["rng"]
    assert state["generator_devices"] == {"train": "cpu"} and "cuda_device" not in state
    fastgan.train(r.out_dir, resume=True, overrides=["run.steps=3"])
    assert not [w for w in recwarn if issubclass(w.category, ResumedOnAnotherDevice)]


class _CudaRng:
    """torch.cuda's per-device RNG state calls, recorded."""

    def __init__(self, monkeypatch):
        self.set = []
        monkeypatch.setattr(torch.cuda, "get_rng_state",
                            lambda device="cuda": torch.full((16,), torch.device(device).index or 0, dtype=torch.uint8))
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": self.set.append((int(s[0]), device)))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_the_cuda_state_saved_is_the_run_devices_and_restores_onto_the_resumed_device(monkeypatch):
    rng = _CudaRng(monkeypatch)
    state = ckpt.rng_state(cuda_device=torch.device("cuda", 1))
    assert "cuda" not in state and int(state["cuda_device"][0]) == 1
    assert ckpt.set_rng_state(state, cuda_device=torch.device("cuda", 0)) == []
    assert rng.set == [(1, torch.device("cuda", 0))]  # cuda:1's state, continued on cuda:0
    rng.set.clear()
    ckpt.set_rng_state(state)  # resumed on the CPU: the CUDA state is not needed
    assert rng.set == []


def test_an_old_checkpoints_per_gpu_states_restore_where_fewer_gpus_are_visible(monkeypatch):
    rng = _CudaRng(monkeypatch)
    state = ckpt.rng_state()
    state["cuda"] = [torch.full((16,), 7, dtype=torch.uint8), torch.full((16,), 8, dtype=torch.uint8)]
    ckpt.set_rng_state(state, cuda_device=torch.device("cuda", 1))
    assert rng.set == [(8, torch.device("cuda", 1))]
    rng.set.clear()
    ckpt.set_rng_state(state, cuda_device=torch.device("cuda", 3))  # no saved entry for it: left as seeded
    assert rng.set == []


@pytest.mark.parametrize("damage, named", [
    (lambda d: d.__setitem__("train", "gpu0"), r"rng\.generator_devices\.train: 'gpu0'"),
    (lambda d: d.__setitem__("train", 3), r"rng\.generator_devices\.train: 3"),
    (lambda d: d.__setitem__("train", "cuda:0"), r"rng\.generator_devices\.train: 'cuda:0'"),
    (lambda d: d.pop("train"), r"rng\.generator_devices\.train: missing"),
    (None, r"rng\.generator_devices: a list, not a mapping of device types"),
])
def test_a_damaged_generator_device_entry_is_a_corrupt_checkpoint_not_another_device(tmp_path, recwarn, damage,
                                                                                    named):
    # before 2026-12-07 such an entry read as "resumed on another device": a warning, and the generator reseeded
    r = fastgan.train(None, overrides=TINY + ["run.steps=2", f"run.dir={tmp_path / 'run'}"])
    path = r.out_dir / "checkpoints" / "last.pt"
    s = torch.load(path, weights_only=True)
    if damage is None:
        s["rng"]["generator_devices"] = []
    else:
        damage(s["rng"]["generator_devices"])
    torch.save(s, path)
    saved = path.read_bytes()
    with pytest.raises(ckpt.CheckpointError, match=named + r".*; the checkpoint is corrupt"):
        fastgan.train(r.out_dir, resume=True, overrides=["run.steps=4"])
    assert path.read_bytes() == saved
    assert not [w for w in recwarn if issubclass(w.category, ResumedOnAnotherDevice)]
