"""`fastgan compare PATH...`: the runs of a study side by side, read from their folders (nothing is loaded or
sampled): how each run's latest session ended (status.json), its step, and the last value of each evaluation
it logged (metrics.csv's eval/* columns: Fréchet distance and classifier score with NTGAN's tail means, Parzen
log-likelihood, mode metrics). `--grid METRIC` lays one metric out as NTGAN's Figure 3 does: a row per run name
without its last '-' part, a column per that part (configs/ntgan-table4: the setting by the model).
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from pathlib import Path

from . import config as C
from .logging_utils import cut_short, no_step_column, without_nul_lines
from .run_commands import folder_arg, non_empty, run, strict_json
from .run_folder import lock_held, read_status

# the metrics worth reading first, when a run logged them; any other eval/* column follows in log order
_FIRST = ("fd_tail_mean", "fd_tail_std", "classifier_score_tail_mean", "classifier_score_tail_std", "fd",
          "classifier_score", "parzen_ll", "parzen_stderr", "modes", "high_quality", "kl_modes")


def find_runs(paths) -> list[Path]:
    """Run folders (with config.yaml) among `paths`: each a run folder or a folder whose sub-folders are runs; a
    folder given twice (`runs/ runs/a`, or by two spellings) is listed once, where it first appeared."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found = []
    for p in map(Path, paths):
        if (p / "config.yaml").is_file():
            found.append(p)
        elif p.is_dir():
            runs = sorted(q for q in p.iterdir() if _may_be_run(q))
            if not runs:
                raise FileNotFoundError(f"{p}: neither a run folder (config.yaml) nor a folder of run folders")
            found += runs
        elif p.exists():
            raise FileNotFoundError(f"{p} is a file; give its run folder (or a folder of run folders)")
        else:
            raise FileNotFoundError(f"{p}: no such run folder")
    seen, unique = set(), []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _may_be_run(q: Path) -> bool:
    """Whether sub-folder q of a folder of runs is listed: it holds a config.yaml, or it cannot be looked into (another
    user's run, lost+found), which summarize shows as unreadable with the reason: one such folder made `compare runs/`
    fail as a whole ("[Errno 13] Permission denied: 'runs/lost+found/config.yaml'"), hiding every other run."""
    try:
        return (q / "config.yaml").is_file()
    except PermissionError:
        return True


def _state(run_dir: Path) -> tuple[str, str, int | None]:
    """(state, reason, the step the session was at) from status.json."""
    try:
        status = read_status(run_dir)
    except FileNotFoundError:
        return "unknown", "no status.json (a run from an older fastgan, or one that failed while starting)", None
    except ValueError as e:
        return "unreadable", f"unreadable status.json ({type(e).__name__}: {e})", None
    state, reason, at = status["state"], str(status.get("reason", "")), status.get("step")
    if status.get("phase") == "final evaluation" and state != "finished":
        reason = f"trained to the end, then {state} in the final evaluation{f': {reason}' if reason else ''}"
    at = at if isinstance(at, int) and not isinstance(at, bool) else None
    if state == "running" and not lock_held(run_dir):
        return "ended", "no process holds the run and it recorded no end (killed?)", at
    return state, reason, at


def _row_values(row: dict) -> tuple[int, dict]:
    if None in row:  # csv's place for fields past the header's: the trainer refuses such a log on resume
        raise ValueError(f"it has {len(row) - 1 + len(row[None])} fields, the header {len(row) - 1}")
    try:
        step = int(float(row.get("step") or 0))
    except (ValueError, OverflowError):
        raise ValueError(f"step {row.get('step')!r} is not a step number") from None
    values = {}
    for k, v in row.items():
        if isinstance(k, str) and k.startswith("eval/") and v not in (None, ""):
            try:
                values[k[5:]] = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{k} holds {v!r}, not a number") from None
    return step, values


def _last_values(run_dir: Path) -> tuple[int, dict, str | None]:
    """(last logged step, {metric: its last logged value}, why the last row was left out or None) of
    metrics.csv's eval/* columns. A last row that does not parse is left out (a running trainer may be writing
    it); any other is an error naming the file."""
    path = run_dir / "metrics.csv"
    try:
        with open(path, newline="") as f:
            text, nul_lines = without_nul_lines(f.read())
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        problem = no_step_column(reader.fieldnames)
        if problem:
            # its rows read as step 0 without a value, and the run was shown as logging nothing, no word of the file
            raise ValueError(f"{path}: not a fastgan metrics log ({problem})")
        # a row being written (or a killed append's) may parse with values cut short ("6,1.3" of "6,1.35"): left
        # out, as a resume leaves it out
        torn = bool(rows) and cut_short(text)
        if torn:
            rows.pop()
    except FileNotFoundError:
        return 0, {}, None
    except csv.Error as e:
        raise ValueError(f"{path}: not a CSV file ({e})") from None
    except UnicodeDecodeError as e:  # named no file (a CLI audit: bytes appended to metrics.csv)
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    # lines of NUL bytes: what a power cut leaves where rows were being appended; left out, as a bad last row
    damaged = [f"{nul_lines} line(s) of NUL bytes"] if nul_lines else []
    damaged += ["a last row without its line end"] if torn else []
    step, last = 0, {}
    for i, row in enumerate(rows):
        try:
            at, values = _row_values(row)
        except ValueError as e:
            if i == len(rows) - 1:
                damaged.append(f"row {i + 1}: {e}")
                break
            raise ValueError(f"{path}: row {i + 1}: {e}") from None
        step = max(step, at)
        last.update(values)
    return step, last, "; ".join(damaged) or None


def summarize(run_dir) -> dict:
    """{"run", "name", "state", "reason", "at", "step", "steps", "metrics", "warning"} of one run folder: "step" is
    the last step metrics.csv logged, "at" the step status.json recorded (where a stopped run stopped). A folder
    that cannot be read gets state "unreadable" and the reason, so one damaged run does not hide the others.
    "warning": metrics.csv's last row did not parse in a run no trainer is writing (the values shown are from the
    rows before it, the final evaluation's perhaps not among them), else None."""
    run_dir = Path(run_dir)
    out = {"run": str(run_dir), "name": run_dir.name, "state": "unreadable", "reason": "", "at": None, "step": 0,
           "steps": None, "metrics": {}, "warning": None}
    try:
        cfg = C.load_config(run_dir / "config.yaml", stored=True)
        out["name"], out["steps"] = cfg.run.name, cfg.run.steps
        out["step"], out["metrics"], bad_last = _last_values(run_dir)
        out["state"], out["reason"], out["at"] = _state(run_dir)
        if bad_last is not None and out["state"] != "running":
            out["warning"] = (f"metrics.csv's last row is damaged ({bad_last}): left out, the values shown are "
                              "from the rows before it")
    except (OSError, ValueError) as e:
        out["state"], out["reason"] = "unreadable", str(e)
    return out


def compare(paths, *, sort: str | None = None, descending: bool = False) -> list[dict]:
    """summarize() of every run under `paths`; sorted by name, or by the metric `sort` (ascending, or descending
    for the scores where higher is better; runs without it or with NaN last either way)."""
    rows = [summarize(p) for p in find_runs(paths)]
    if sort is None:
        if descending:
            raise C.ConfigError("--descending: orders by --sort's metric; give --sort METRIC")
        return sorted(rows, key=lambda r: (r["name"], r["run"]))
    (sort,) = _logged(rows, [sort], "--sort")
    sign = -1.0 if descending else 1.0

    def key(r):
        v = r["metrics"].get(sort, math.nan)
        return (math.isnan(v), 0.0 if math.isnan(v) else sign * v, r["name"])
    return sorted(rows, key=key)


def _logged(rows, metrics: list[str], option: str) -> list[str]:
    """The metrics without their "eval/" prefix, each logged by some run (else a ConfigError naming `option`)."""
    metrics = [m.removeprefix("eval/") for m in metrics]
    unknown = [m for m in metrics if not any(m in r["metrics"] for r in rows)]
    if unknown:
        raise C.ConfigError(f"{option}: no run logged {', '.join('eval/' + m for m in unknown)}; logged: "
                            f"{', '.join(_metric_names(rows)) or 'none'}")
    return metrics


def _metric_names(rows) -> list[str]:
    seen = []
    for r in rows:
        seen += [k for k in r["metrics"] if k not in seen]
    return [k for k in _FIRST if k in seen] + [k for k in seen if k not in _FIRST]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isfinite(v) and v == int(v) and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *body])


def format_table(rows: list[dict], metrics: list[str] | None = None) -> str:
    names = _metric_names(rows) if metrics is None else metrics
    header = ["run", "state", "step", *names]
    body = [[_label(r, rows), r["state"], f"{r['step']}/{r['steps'] if r['steps'] is not None else '?'}",
             *(_fmt(r["metrics"].get(k)) for k in names)] for r in rows]
    notes = [f"{r['name']} ({r['run']}): {r['state']}: {r['reason'].splitlines()[0]}" for r in rows
             if r["state"] not in ("finished", "running") and r["reason"]]
    return _table(header, body) + _notes(notes + _warnings(rows))


def _label(r: dict, rows: list[dict]) -> str:
    """The run's name, with its folder's where another run shown has the same name (the same config run twice),
    and its folder's path where another of those has that folder's name too (a run and its copy elsewhere): two
    identical rows would say nothing of which is which."""
    same = [o for o in rows if o["name"] == r["name"]]
    if len(same) == 1:
        return r["name"]
    folder = Path(r["run"]).name
    return f"{r['name']} ({r['run'] if sum(Path(o['run']).name == folder for o in same) > 1 else folder})"


def _warnings(rows) -> list[str]:
    return [f"{r['name']} ({r['run']}): {r['warning']}" for r in rows if r.get("warning")]


def _notes(lines: list[str]) -> str:
    return "\n\n" + "\n".join(lines) if lines else ""


def _cell(metrics: dict, metric: str) -> str:
    """The metric's value; a tail mean with its std beside it (NTGAN's tables: mean ± std of the last five)."""
    text = _fmt(metrics.get(metric))
    std = metrics.get(metric.removesuffix("_mean") + "_std") if metric.endswith("_tail_mean") else None
    return text if std is None or metric not in metrics else f"{text}±{_fmt(std)}"


def _natural(name: str) -> list:
    """name's digit runs as numbers: '-10' after '-2' (text order put it first, and an older run was shown)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def format_grid(rows: list[dict], metric: str) -> str:
    """`metric` with a row per run name less its last '-' part and a column per that part (in the order the run
    folders sort); a run that has not finished shows its state and step; of several runs of one name the latest
    (by folder name, which the trainer stamps with the time, numbers in it compared as numbers: runs started in one
    second are <stamp>, <stamp>-2, .., <stamp>-10) is shown and the others are listed below."""
    (metric,) = _logged(rows, [metric], "--grid")
    cells, row_keys, col_keys, hidden = {}, [], [], []
    for r in sorted(rows, key=lambda r: (_natural(Path(r["run"]).name), r["run"])):
        head, _, tail = r["name"].rpartition("-")
        key = (head or r["name"], tail if head else "-")
        row_keys += [key[0]] if key[0] not in row_keys else []
        col_keys += [key[1]] if key[1] not in col_keys else []
        if key in cells:
            hidden.append(cells[key][1])
        # a run that has not finished shows its state and step, not the values it logged before: where it stopped
        # (status.json), or, running or killed, the last step it logged (status.json keeps the session's start)
        at = max(r["at"] or 0, r["step"])
        text = _cell(r["metrics"], metric) if r["state"] in ("finished", "unknown") else f"{r['state']}@{at}"
        cells[key] = (text, r["run"])
    body = [[rk, *(cells.get((rk, ck), ("", ""))[0] for ck in col_keys)] for rk in row_keys]
    note = f"\n(older runs of the same name not shown: {', '.join(hidden)})" if hidden else ""
    return f"eval/{metric}\n" + _table(["", *col_keys], body) + note + _notes(_warnings(rows))


def to_json(rows: list[dict], metrics: list[str] | None = None) -> str:
    """The summaries as strict JSON: NaN and infinities as the strings "nan", "inf", "-inf"."""
    return strict_json([{**r, "metrics": {k: v for k, v in r["metrics"].items() if metrics is None or k in metrics}}
                        for r in rows])


def _cmd_compare(args) -> int:
    def body():
        if args.grid and (args.metrics or args.sort or args.json or args.descending):
            raise C.ConfigError("--grid: lays out one metric on its own; it takes no --metrics, --sort, --descending "
                                "or --json")
        rows = compare(args.paths, sort=args.sort, descending=args.descending)
        if args.grid:
            return format_grid(rows, args.grid)
        metrics = None
        if args.metrics:
            # each once: --metrics fd,fd printed the column twice
            metrics = _logged(rows, list(dict.fromkeys(m.strip() for m in args.metrics.split(",") if m.strip())),
                              "--metrics")
        if args.json:
            return to_json(rows, metrics)
        return format_table(rows, metrics)
    return run("compare", body)


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="the runs of a study side by side (state, step, evaluations)",
        description="Read run folders (or folders of run folders) and print one row per run: how its latest "
                    "session ended, its step, and the last value of each evaluation it logged.")
    p.add_argument("paths", nargs="+", type=folder_arg, help="run folders, or folders holding run folders (e.g. runs/)")
    p.add_argument("--metrics", help="comma-separated eval metrics to show, e.g. fd_tail_mean,fd (default: all)")
    p.add_argument("--sort", help="sort by this eval metric, ascending (default: by run name)")
    p.add_argument("--descending", action="store_true",
                   help="with --sort: highest first (classifier score, Parzen log-likelihood)")
    p.add_argument("--grid", metavar="METRIC", type=non_empty("metric name"),
                   help="one metric as a grid: rows the run names less their last '-' part, columns that part (NTGAN "
                        "Figure 3's layout)")
    p.add_argument("--json", action="store_true", help="print every run's summary as JSON")
    p.set_defaults(func=_cmd_compare)
