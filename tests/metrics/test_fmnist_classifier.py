"""The shipped Fashion-MNIST classifier (weights checked by SHA-256, accuracy on the real test split) and
fmnist_scores' behaviour on real and degraded images, and its argument errors."""
import shutil

import numpy as np
import pytest
import torch

from fastgan.metrics import FashionMNISTNet, classify, fmnist_scores, load_fmnist_classifier, real_stats
from fastgan.metrics import classifier as clf

from helpers import require_fashion_mnist


def _split(split: str, n: int):
    require_fashion_mnist()
    return clf.labelled_fashion_mnist(split, n)


@pytest.fixture(scope="module")
def net():
    return load_fmnist_classifier()


def test_shipped_weights_are_the_recorded_ones(net):
    assert clf.WEIGHTS_SHA256 is not None and clf._sha256(clf.WEIGHTS) == clf.WEIGHTS_SHA256
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_accuracy_on_the_test_split(net):
    x, y = _split("test", 10000)
    _, logits = classify(x, net)
    assert float((logits.argmax(1) == y).float().mean()) >= 0.90


def test_scores_separate_real_from_degraded_images(net):
    test, _ = _split("test", 2000)
    train, labels = _split("train", 2000)
    stats = real_stats(test, net)
    real = fmnist_scores(train, stats, classifier=net)
    noise = torch.randn(train.shape, generator=torch.Generator().manual_seed(0))
    noisy = fmnist_scores((train + 0.5 * noise).clamp(-1, 1), stats, classifier=net)
    one_class = fmnist_scores(train[labels == 1], stats, classifier=net)  # trousers only
    assert real["fd"] < 0.1 * noisy["fd"] and real["fd"] < 0.1 * one_class["fd"]
    assert real["score"] > 2 * one_class["score"] and real["score"] > noisy["score"]
    assert one_class["score"] < 1.5


def test_damaged_weights_are_refused(tmp_path, monkeypatch):
    copy = tmp_path / "w.pt"
    shutil.copy(clf.WEIGHTS, copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(clf, "WEIGHTS", copy)
    with pytest.raises(RuntimeError, match=r"w\.pt are damaged \(SHA-256 differs"):
        load_fmnist_classifier()


def test_info_reports_the_classifier(tmp_path, monkeypatch):
    import fastgan
    from fastgan.info import format_report

    assert fastgan.info()["metrics_classifier"] == {"ok": True, "reason": None}
    copy = tmp_path / "w.pt"
    copy.write_bytes(clf.WEIGHTS.read_bytes()[:-1])
    monkeypatch.setattr(clf, "WEIGHTS", copy)
    r = fastgan.info()
    assert r["metrics_classifier"]["ok"] is False
    assert "Fashion-MNIST classifier (run.fd, fastgan eval): " + f"{copy} is damaged" in format_report(r)
    monkeypatch.setattr(clf, "WEIGHTS", tmp_path / "gone.pt")
    assert fastgan.info()["metrics_classifier"]["reason"].endswith("gone.pt not found (reinstall fastgan)")


def test_other_weights_by_path(tmp_path):
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match=r"bad\.pt: not a FashionMNISTNet state dict"):
        load_fmnist_classifier(path=tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(RuntimeError, match=r"junk\.pt: not a FashionMNISTNet state dict"):
        load_fmnist_classifier(path=tmp_path / "junk.pt")
    torch.save(FashionMNISTNet().state_dict(), tmp_path / "mine.pt")
    assert isinstance(load_fmnist_classifier(path=tmp_path / "mine.pt"), FashionMNISTNet)


def test_an_error_without_a_message_is_named_by_its_type(tmp_path, monkeypatch):
    # an exception whose text is empty made the wrapper's own message fail (IndexError from splitlines()[0])
    torch.save({"x": torch.zeros(1)}, tmp_path / "w.pt")

    def load(*a, **k):
        raise EOFError()

    monkeypatch.setattr(torch, "load", load)
    with pytest.raises(RuntimeError, match=r"w\.pt: not a FashionMNISTNet state dict \(EOFError\)"):
        load_fmnist_classifier(path=tmp_path / "w.pt")


def test_classify_uses_eval_mode_and_restores_the_flag():
    torch.manual_seed(0)
    net = FashionMNISTNet().train()
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    f_batch, _ = classify(x, net, batch_size=6)
    f_single, _ = classify(x, net, batch_size=1)
    torch.testing.assert_close(f_batch, f_single)   # no batch statistics
    assert net.training


def test_classify_runs_convolutions_without_tf32_and_restores_the_flags(monkeypatch):
    # cuDNN's TF32 default (Ampere and newer) moved FDs by GPU generation; the caller's flags come back after
    net = FashionMNISTNet()
    seen = []
    real = net.features
    monkeypatch.setattr(net, "features", lambda x: (seen.append((torch.backends.cudnn.allow_tf32,
                                                                 torch.backends.cudnn.enabled)), real(x))[1])
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark)
    assert before[0]  # torch's default, which classify overrides
    classify(torch.full((3, 1, 28, 28), -1.0), net, batch_size=2)
    assert seen == [(False, before[1])] * 2
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark) == before


@pytest.mark.parametrize("x,exc,match", [
    (torch.zeros(8, 3, 28, 28), ValueError, r"^samples: expected Fashion-MNIST images \(N, 1, 28, 28\)"),
    (torch.zeros(1, 1, 28, 28), ValueError, r"^samples: .*N >= 2"),
    (torch.full((8, 1, 28, 28), 255.0), ValueError, r"^samples: values span \[255, 255\]; the classifier takes "
                                                     r"images in \[-1, 1\]"),
    (torch.zeros(8, 1, 28, 28, dtype=torch.uint8), TypeError, r"^samples: expected floating-point images"),
    (np.full((8, 1, 28, 28), np.nan, np.float32), ValueError, r"^samples: contains 6272 non-finite"),
])
def test_bad_images(x, exc, match):
    with pytest.raises(exc, match=match):
        fmnist_scores(x, classifier=FashionMNISTNet())


def test_images_in_0_1_warn():
    with pytest.warns(UserWarning, match=r"^samples: every value is >= 0 .*images in \[0, 1\]\?"):
        fmnist_scores(torch.rand(20, 1, 28, 28), classifier=FashionMNISTNet())


def test_too_few_samples_for_the_splits_are_named_as_samples():
    with pytest.raises(ValueError, match=r"^samples: 19 images cannot make splits=10 parts of at least 2"):
        fmnist_scores(torch.zeros(19, 1, 28, 28) - 0.5, classifier=FashionMNISTNet())
    with pytest.raises(ValueError, match=r"^samples: 5 images cannot make splits=3"):
        fmnist_scores(torch.zeros(5, 1, 28, 28) - 0.5, classifier=FashionMNISTNet(), splits=3)
    assert fmnist_scores(torch.zeros(6, 1, 28, 28) - 0.5, classifier=FashionMNISTNet(), splits=3)["samples"] == 6


def test_bad_real_and_classifier():
    x = torch.zeros(20, 1, 28, 28) - 0.5
    with pytest.raises(ValueError, match=r"^real: expected Fashion-MNIST images"):
        fmnist_scores(x, torch.zeros(10, 1, 32, 32), classifier=FashionMNISTNet())
    with pytest.raises(ValueError, match=r"^real: has 4 features, samples has 128"):
        fmnist_scores(x, (torch.zeros(4), torch.eye(4)), classifier=FashionMNISTNet())
    with pytest.raises(ValueError, match=r"^real: expected features \(N, D\) or a \(mean, covariance\) pair, got 1"):
        fmnist_scores(x, [x], classifier=FashionMNISTNet())
    with pytest.raises(TypeError, match=r"^classifier: expected a FashionMNISTNet, got Linear"):
        fmnist_scores(x, classifier=torch.nn.Linear(2, 2))
