"""Result records -> Markdown tables (and, through :mod:`forwardonly.bench.plots`, PNG plots).

``forwardonly report PATH`` never trains or measures anything. ``PATH`` is either

* a folder of result records (``*.json``, searched recursively). Records of
  ``forwardonly train`` runs (``config`` with ``optim``, ``scheme`` and ``task``
  sections, ``results`` with ``test_after``) form the accuracy table: runs that
  differ only in seed are one group, and every record counts as one run, so an
  experiment run twice is aggregated, never replaced. Any other record (a dict
  with ``results``) is summarised generically: its numeric results, grouped by
  name and config, as median, spread and count; or
* one ``forwardonly train`` / ``forwardonly local train`` output directory
  (``metrics.jsonl`` beside ``config.json`` or ``summary.json``): one run, its
  final metrics, and its curves.

Figures are medians over records with their spread (``median [min-max]``),
never the best run. A file that is not valid JSON is reported with its path and
the parser's message (``strict=True`` makes it an error). Suites add their own
tables in ``benchmarks/<suite>/report.py``, built on these functions.

Example::

    from forwardonly.bench.report import load_results, render_markdown
    print(render_markdown(load_results("benchmarks/zo_bench/results")))
"""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

MiB = 2**20
KINDS = ("train_run", "other")


@dataclass
class Loaded:
    """Records by kind (each with its ``_path``), the files that could not be used, and a run's curve."""

    records: dict[str, list[dict]] = field(default_factory=lambda: {k: [] for k in KINDS})
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    unrecognised: list[str] = field(default_factory=list)
    run_dir: str | None = None  # set when PATH was one run's output directory
    curve: list[dict] = field(default_factory=list)  # that run's metrics.jsonl rows


def kind_of(rec) -> str | None:
    """The kind of a result record, from its content (``None`` when it is not a record)."""
    if not isinstance(rec, dict):
        return None
    cfg, res = rec.get("config"), rec.get("results")
    if isinstance(cfg, dict) and all(isinstance(cfg.get(k), dict) for k in ("optim", "scheme", "task")):
        return "train_run"
    return "other" if isinstance(res, dict) else None


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() and any((path / f).is_file() for f in ("config.json", "summary.json"))


_UNREADABLE = object()


def _read_json(path: Path, out: Loaded, strict: bool):
    """The file's JSON; an unreadable file is listed in ``out.bad`` (``_UNREADABLE``) or, ``strict``, an error."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        if strict:
            raise UserError(f"{path}: not a readable JSON file: {e}") from None
        out.bad.append((str(path), f"not a readable JSON file: {e}"))
        return _UNREADABLE


def load_run_dir(root: Path, *, strict: bool = False) -> Loaded:
    """One training run's output directory as one record (``summary.json`` when it finished) and its curve."""
    out = Loaded(run_dir=str(root))
    summary = _read_json(root / "summary.json", out, strict) if (root / "summary.json").is_file() else None
    config = _read_json(root / "config.json", out, strict) if (root / "config.json").is_file() else None
    summary = summary if isinstance(summary, dict) else {}
    config = config if isinstance(config, dict) else None
    for n, line in enumerate((root / "metrics.jsonl").read_text().splitlines(), 1):
        if line.strip():
            try:
                out.curve.append(json.loads(line))
            except json.JSONDecodeError as e:
                if strict:
                    raise UserError(f"{root / 'metrics.jsonl'}:{n}: not a JSON line: {e}") from None
                out.bad.append((f"{root / 'metrics.jsonl'}:{n}", f"not a JSON line: {e}"))
    results = {k: v for k, v in summary.items() if k != "config"}
    results.setdefault("history", out.curve)
    rec = {"name": root.name, "config": config or summary.get("config") or {}, "results": results,
           "status": "ok" if summary else "unfinished (no summary.json)", "_path": str(root)}
    out.records[kind_of(rec) or "other"].append(rec)
    return out


def load_results(path: str | Path, *, strict: bool = False) -> Loaded:
    """Every record under ``path`` (recursively), or one run directory. Bad files are listed, or raise."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"results directory not found: {root}")
    if is_run_dir(root):
        return load_run_dir(root, strict=strict)
    out = Loaded()
    for p in sorted(root.rglob("*.json")):
        rec = _read_json(p, out, strict)
        if rec is _UNREADABLE:
            continue
        kind = kind_of(rec)
        if kind is None:
            out.unrecognised.append(str(p))
            continue
        rec["_path"] = str(p)
        out.records[kind].append(rec)
    return out


# ----------------------------------------------------------------------------- statistics
def finite(values) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)]


def spread(values, scale: float = 1.0, digits: int = 1) -> str:
    """``median [min-max]`` of the finite values, the median alone when they agree (``-`` for none)."""
    vals = [v * scale for v in finite(values)]
    if not vals:
        return "-"
    f = f"{{:.{digits}f}}"
    med, lo, hi = (f.format(v) for v in (statistics.median(vals), min(vals), max(vals)))
    return med if lo == hi else f"{med} [{lo}-{hi}]"


def median(values) -> float:
    vals = finite(values)
    return statistics.median(vals) if vals else float("nan")


def metric_of(metrics: dict | None) -> tuple[str | None, float | None]:
    """The headline metric of an evaluation: accuracy, else F1, else exact match."""
    if not isinstance(metrics, dict):
        return None, None
    for key in ("accuracy", "f1", "exact_match"):
        if isinstance(metrics.get(key), (int, float)):
            return key, float(metrics[key])
    return None, None


def table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- training runs
def flatten(d: dict, prefix: str = "") -> dict:
    """``{"a.b": value}`` for every leaf of nested dicts."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _current_defaults() -> dict:
    try:
        from ..config import to_dict
        from ..lm.config import TrainConfig

        return flatten(to_dict(TrainConfig()))
    except Exception:  # noqa: BLE001 - the training extras are missing
        return {}


def normalised_configs(recs: list[dict]) -> list[dict]:
    """Each record's config, flattened, seed and output directory left out, with every key any of the records
    has. A key missing from a record (written before the key existed) takes today's default where the current
    ``TrainConfig`` still has the key, else the value most of the records hold; so records made before and after
    a key was added group together, without reading old records through a config class that has moved on."""
    from collections import Counter

    flats = [{k: v for k, v in flatten(r.get("config") or {}).items() if k not in ("seed", "out_dir")} for r in recs]
    keys = sorted({k for f in flats for k in f})
    defaults, fill = _current_defaults(), {}
    for k in keys:
        if any(k not in f for f in flats):
            seen = Counter(json.dumps(f[k], sort_keys=True) for f in flats if k in f)
            fill[k] = defaults[k] if k in defaults else json.loads(seen.most_common(1)[0][0])
    return [{k: f.get(k, fill.get(k)) for k in keys} for f in flats]


def _seed(rec: dict):
    return rec.get("seed", rec.get("config", {}).get("seed"))


def group_runs(runs: list[dict]) -> list[dict]:
    """Runs that differ only in seed (and output directory) form one group, in first-seen order
    (configs compared by :func:`normalised_configs`). Every record is one run: two records of the same seed
    are two runs, both counted."""
    groups: dict[str, dict] = {}
    for rec, flat in zip(runs, normalised_configs(runs)):
        key = json.dumps(flat, sort_keys=True, default=str)
        g = groups.setdefault(key, {"name": rec.get("experiment") or rec.get("name", "?"), "config": rec["config"],
                                    "flat": flat, "ok": [], "failed": []})
        (g["ok"] if rec.get("status", "ok") == "ok" else g["failed"]).append(rec)
    return list(groups.values())


def _sort_key(g: dict):
    c = g["config"]
    return (c["task"]["name"], c["scheme"]["name"], c.get("budget_forwards") or 0, c["optim"]["name"],
            c["optim"].get("lr") or 0)


def summarise_group(g: dict) -> dict:
    """The values of one group's runs: metric after/before, forwards, times, memory, history."""
    res = [r.get("results", {}) for r in g["ok"]]
    name = next((metric_of(r.get("test_after"))[0] for r in res if metric_of(r.get("test_after"))[0]), None)
    return {
        "metric": name or "-",
        "after": finite(metric_of(r.get("test_after"))[1] for r in res),
        "before": finite(metric_of(r.get("test_before"))[1] for r in res),
        "forwards": finite(r.get("forwards") for r in res),
        "train_time_s": finite(r.get("train_time_s") for r in res),
        "wall_time_s": finite(r.get("wall_time_s") for r in res),
        "peak_rss": finite(r.get("peak_rss_bytes") for r in res),
        "seeds": sorted({s for s in (_seed(r) for r in g["ok"]) if s is not None}),
        "n": len(g["ok"]),
        "n_failed": len(g["failed"]),
    }


def _reference_key(g: dict) -> str:
    """What a zero-shot run must share with a trained group: the model, scheme and task sections."""
    return json.dumps({k: v for k, v in g["flat"].items() if k.split(".")[0] in ("model", "scheme", "task")},
                      sort_keys=True, default=str)


def trained_groups(runs: list[dict]) -> list[tuple[dict, dict]]:
    """(group, summary) of the groups that trained, sorted. Groups with ``steps: 0`` are zero-shot
    references: a trained group without its own ``test_before`` takes theirs (same model, scheme, task)."""
    groups = group_runs(runs)
    refs: dict[str, list] = {}
    for g in groups:
        if g["config"].get("steps") == 0:
            refs.setdefault(_reference_key(g), []).extend(summarise_group(g)["after"])
    out = []
    for g in sorted(groups, key=_sort_key):
        if g["config"].get("steps") == 0:
            continue
        s = summarise_group(g)
        if not s["before"]:
            s["before"], s["before_from"] = refs.get(_reference_key(g), []), "zero-shot run"
        out.append((g, s))
    return out


def train_table(runs: list[dict]) -> str:
    """Test metric, median [min-max] over runs with the zero-shot beside, per task x scheme x optimizer x budget."""
    head = ["task", "scheme", "optimizer", "lr", "budget (forwards)", "runs", "metric", "test % median [min-max]",
            "zero-shot %", "forwards used", "train s / run", "peak RSS MiB", "failed"]
    rows = []
    for g, s in trained_groups(runs):
        c = g["config"]
        rows.append([c["task"]["name"], c["scheme"]["name"], c["optim"]["name"], f"{c['optim']['lr']:g}",
                     c.get("budget_forwards") or "-", s["n"], s["metric"], spread(s["after"], 100),
                     spread(s["before"], 100), spread(s["forwards"], digits=0), spread(s["train_time_s"], digits=0),
                     spread(s["peak_rss"], 1 / MiB, 0), s["n_failed"] or ""])
    return table(head, rows)


def step_seconds(rec: dict) -> list[float]:
    """Seconds of each training step after the first (a warm-up) from a run record's metrics rows (cumulative
    ``train_time_s``); with fewer than two rows, the run's mean step (``train_time_s / step``) alone."""
    res = rec.get("results", {})
    rows = [(h["step"], h["train_time_s"]) for h in res.get("history", []) if "train_time_s" in h and "loss" in h]
    if len(rows) >= 2:
        return [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in itertools.pairwise(rows) if s1 > s0]
    return [res["train_time_s"] / res["step"]] if res.get("step") else []


def _commit(rec: dict) -> str:
    git = rec.get("git") or {}
    return str(git.get("commit"))[:7] + (" (dirty)" if git.get("dirty") else "")


def experiments_table(runs: list[dict], reference: str, per_bytes: dict[str, float] | None = None) -> str:
    """A suite's experiments against one of them (``reference``): a row per experiment and commit, with the runs,
    whole-process peak RSS (the child process from start-up, loading included) and seconds per step, each
    ``median [min-max]`` and as a ratio of medians to the reference's at the same commit; the test metric before
    and after. ``per_bytes``: ``{label: bytes}`` adds the median peak RSS as a multiple of each (e.g. the model's
    fp32 weights)."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(runs, key=lambda r: r.get("created", "")):
        if r.get("status", "ok") == "ok":
            by.setdefault((r.get("experiment") or r.get("name", "?"), _commit(r)), []).append(r)
    rss = {k: [r["results"]["memory"]["peak_rss"] for r in v] for k, v in by.items()}
    step = {k: [t for r in v for t in step_seconds(r)] for k, v in by.items()}
    head = ["experiment", "commit", "runs", "peak RSS, whole run (MiB)", f"x {reference}",
            *(f"x {label}" for label in per_bytes or {}), "s / step", f"x {reference} (s / step)",
            "test before %", "test after %"]
    rows = []
    for name, commit in sorted(by, key=lambda k: (k[1], k[0] != reference, k[0])):
        recs, ref = by[name, commit], (reference, commit)
        rows.append([name, commit, len(recs), spread(rss[name, commit], 1 / MiB, 0),
                     f"{median(rss[name, commit]) / median(rss[ref]):.2f}" if ref in by else "-",
                     *(f"{median(rss[name, commit]) / b:.2f}" for b in (per_bytes or {}).values()),
                     spread(step[name, commit], digits=2),
                     f"{median(step[name, commit]) / median(step[ref]):.2f}" if ref in by else "-",
                     spread((metric_of(r["results"].get("test_before"))[1] for r in recs), 100),
                     spread((metric_of(r["results"].get("test_after"))[1] for r in recs), 100)])
    return table(head, rows)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Expired|Interrupt)\b")


def error_summary(error: str, width: int = 200) -> str:
    """The exception line of a traceback (the last line that names one), else its last line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or ["?"]
    named = [line for line in lines if _EXCEPTION_LINE.match(line)]
    line = named[-1] if named else lines[-1]
    return line if len(line) <= width else line[: width - 3] + "..."


def failed_table(runs: list[dict]) -> str:
    rows = [[r.get("experiment") or r.get("name", "?"), _seed(r),
             error_summary(r.get("error", "?")).replace("|", "\\|"), Path(r["_path"]).name]
            for r in runs if r.get("status", "ok") != "ok"]
    return table(["experiment", "seed", "error", "file"], rows) if rows else ""


# ----------------------------------------------------------------------------- any other record
def numeric_leaves(obj, prefix: str = "", depth: int = 3) -> dict[str, float]:
    """``{"a.b": value}`` for the numbers in nested dicts (lists and deeper levels are left out)."""
    out = {}
    if isinstance(obj, dict) and depth > 0:
        for k, v in obj.items():
            out.update(numeric_leaves(v, f"{prefix}{k}.", depth - 1))
    elif finite([obj]):
        out[prefix.rstrip(".")] = float(obj)
    return out


def other_table(recs: list[dict]) -> str:
    """Records of any kind, grouped by name and config (seed aside): each numeric result as
    median [min-max] over the group's records, with the count."""
    groups: dict[str, list] = {}
    for rec in recs:
        cfg = rec.get("config") if isinstance(rec.get("config"), dict) else {}
        key = json.dumps([rec.get("name", Path(rec["_path"]).stem), {k: v for k, v in cfg.items() if k != "seed"}],
                         sort_keys=True, default=str)
        groups.setdefault(key, []).append(rec)
    parts = []
    for group in groups.values():
        leaves = [numeric_leaves(r["results"]) for r in group]
        keys = [k for k in leaves[0] if all(k in x for x in leaves)]
        name = group[0].get("name", Path(group[0]["_path"]).stem)
        if not keys:
            parts.append(f"**{name}** ({len(group)} records): no numeric results at the top levels")
            continue
        rows = [[k, spread([x[k] for x in leaves], digits=4), len(group)] for k in keys]
        parts.append(f"**{name}** ({len(group)} record{'s' if len(group) > 1 else ''}: "
                     + ", ".join(f"`{Path(r['_path']).name}`" for r in group) + ")\n\n"
                     + table(["result", "median [min-max]", "records"], rows))
    return "\n\n".join(parts)


def run_table(rec: dict, curve: list[dict]) -> str:
    """One run directory: its evaluations and the last logged row of its curve."""
    res = rec.get("results", {})
    rows = []
    for key in ("test_before", "test_after", "test_acc", "best_val_acc"):
        v = res.get(key)
        name, value = metric_of(v) if isinstance(v, dict) else (key, v if finite([v]) else None)
        if value is not None:
            rows.append([key, name, f"{value:.4g}"])
    for ev in res.get("evals") or []:
        name, value = metric_of(ev)
        if value is not None:
            rows.append([f"validation at step {ev.get('step')}", name, f"{value:.4g}"])
    if curve:
        for k, v in numeric_leaves(curve[-1], depth=1).items():
            rows.append([f"last logged row ({len(curve)} rows)", k, f"{v:.4g}"])
    for k in ("step", "forwards", "train_time_s", "peak_rss_bytes"):
        if finite([res.get(k)]):
            rows.append(["run", k, f"{res[k]:.4g}"])
    head = f"Run `{rec['_path']}` ({rec.get('status', 'ok')}), counted as one run."
    return head + "\n\n" + (table(["what", "metric", "value"], rows) if rows else "Nothing logged yet.")


# ----------------------------------------------------------------------------- the whole report
def render_markdown(loaded: Loaded, plots: list[str] | None = None, link_prefix: str = "") -> str:
    """The report as Markdown: one section per kind present, then the plots and the files skipped.

    Plots are linked as ``link_prefix + file name`` (the prefix places them relative to the Markdown file)."""
    from .convergence import SUITE
    from .convergence import render as convergence_section

    r = loaded.records
    parts = []
    runs = [x for x in r["train_run"] if not str(x.get("name", "")).startswith(SUITE)]
    if loaded.run_dir:
        rec = (r["train_run"] + r["other"])[0]
        parts.append("## One run\n\n" + run_table(rec, loaded.curve))
    elif r["train_run"]:
        if runs:
            n_ok = sum(1 for x in runs if x.get("status", "ok") == "ok")
            parts.append(f"## Accuracy per task x scheme x optimizer\n\n{n_ok} finished runs, "
                         f"{len(runs) - n_ok} failed. Test metric in %, median [min-max] over the runs "
                         "(every record is one run); zero-shot is the same model before training.\n\n"
                         + train_table(runs))
        if len(runs) < len(r["train_run"]):  # the convergence suite's records: curves, not one number per run
            parts.append(convergence_section(r["train_run"]))
        failed = failed_table(r["train_run"])
        if failed:
            parts.append("### Failed runs\n\n" + failed)
    if r["other"] and not loaded.run_dir:
        parts.append("## Other records\n\n" + other_table(r["other"]))
    if plots:
        parts.append("## Plots\n\n" + "\n".join(f"![{Path(p).stem}]({link_prefix}{Path(p).name})" for p in plots))
    if loaded.bad or loaded.unrecognised:
        lines = [f"* `{p}`: {why}" for p, why in loaded.bad]
        lines += [f"* `{p}`: not a result record" for p in loaded.unrecognised]
        parts.append("## Files skipped\n\n" + "\n".join(lines))
    if not parts:
        return "No result records found.\n"
    return "\n\n".join(parts) + "\n"
