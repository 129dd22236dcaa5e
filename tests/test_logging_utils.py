"""fastgan.logging_utils.CSVLogger: the metrics log holds no row in memory that its file holds (a run logging every
step kept ~920 bytes a row for the whole run: ~0.9 GB a million steps), and reads the file back where it needs the
rows: a new column's rewrite, drop, logged and rows."""
import csv
import tracemalloc

from fastgan.logging_utils import CSVLogger


def _read(path):
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return r.fieldnames, list(r)


def test_rows_in_the_file_are_not_held_in_memory(tmp_path):
    log = CSVLogger(tmp_path / "metrics.csv")
    log.log(0, {f"loss/{i}": 0.5 for i in range(12)})
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for step in range(1, 2001):
            log.log(step, {f"loss/{i}": step / (i + 1) for i in range(12)})
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert grown < 100_000, grown  # 2,000 rows held were ~1.8 MB
    assert len(_read(tmp_path / "metrics.csv")[1]) == 2001


def test_a_new_column_rewrites_every_row_from_the_file(tmp_path):
    path = tmp_path / "metrics.csv"
    log = CSVLogger(path)
    for step in range(5):
        log.log(step, {"loss": step * 0.25})
    log.log(5, {"loss": 1.5, "eval/fd": 3.0})
    header, rows = _read(path)
    assert header == ["step", "loss", "eval/fd"]
    assert [(r["step"], r["loss"], r["eval/fd"]) for r in rows] == \
        [(str(s), f"{s * 0.25:.6g}", "") for s in range(5)] + [("5", "1.5", "3")]
    assert log.logged(5, "eval/fd") and not log.logged(4, "eval/fd")
    assert [int(r["step"]) for r in log.rows] == list(range(6))


def test_drop_and_resume_work_on_rows_held_only_by_the_file(tmp_path):
    path = tmp_path / "metrics.csv"
    log = CSVLogger(path)
    for step in range(4):
        log.log(step, {"loss": float(step)})
    log.log(3, {"eval/fd": 2.0})
    log.drop(3, ["eval/fd"])
    assert not log.logged(3, "eval/fd") and log.logged(3, "loss")
    log.log(4, {"loss": 4.0})
    assert [(r["step"], r["eval/fd"]) for r in _read(path)[1]] == [(str(s), "") for s in range(5)]
    resumed = CSVLogger(path, resume_step=2)
    assert _read(path)[1][-1]["step"] == "4"  # read, rewritten at the first row logged
    resumed.log(3, {"loss": 9.0})
    assert [(r["step"], r["loss"]) for r in _read(path)[1]] == [("0", "0"), ("1", "1"), ("2", "2"), ("3", "9")]
