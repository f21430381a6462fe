"""Result JSON -> Markdown tables (and, through :mod:`forwardonly.bench.plots`, PNG plots).

``forwardonly report RESULTS_DIR`` reads every ``*.json`` under a directory and
never trains or measures anything. What a file holds is decided from its
content, not its name (:func:`kind_of`):

* ``train_run`` - one ``forwardonly train`` run as ``benchmarks/zo_bench/run.py``
  writes it: ``config`` has ``optim``, ``scheme`` and ``task`` sections;
  ``results`` has ``test_before`` (zero-shot) and ``test_after``; ``status`` is
  ``ok`` or ``failed`` (with ``error``).
* ``memory_sweep`` - ``results.rows`` of ``{method, batch, seq, peak_rss, ...}``
  plus ``results.baseline`` (``benchmarks/zo_bench/memory.py``).
* ``local_learning`` - ``results.aggregate.test_acc`` over seeds, ``config.algo``
  (``benchmarks/local_learning/run.py``).
* ``local_memory`` - ``results[arch][method].peak_rss_above_start``
  (``benchmarks/local_learning/memory.py``).

Anything else is listed as unrecognised; a file that is not valid JSON is
reported with its path and the parser's message, and the other files are still
rendered (``strict=True`` makes it an error instead).

Example::

    from forwardonly.bench.report import load_results, render_markdown
    loaded = load_results("benchmarks/zo_bench/results")
    print(render_markdown(loaded))
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

MiB = 2**20
KINDS = ("train_run", "memory_sweep", "local_learning", "local_memory")
# the targets of issue 4, at batch 16 x 256 tokens, full-parameter SmolLM2-135M
TARGET_POINT = (16, 256)
TARGETS = (("fo-adam", "zo-sgd", ">=", 4.0), ("zo-sgd", "inference", "<=", 1.1))
METHOD_ORDER = ("baseline", "inference", "zo-sgd", "fo-sgd", "fo-adam", "fo-adam-lora", "fo-adam-ckpt")


@dataclass
class Loaded:
    """Records by kind (each with its ``_path``), plus the files that could not be used."""

    records: dict[str, list[dict]] = field(default_factory=lambda: {k: [] for k in KINDS})
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    unrecognised: list[str] = field(default_factory=list)


def kind_of(rec) -> str | None:
    """The kind of a result record, from its content (``None`` when it is not one we know)."""
    if not isinstance(rec, dict):
        return None
    cfg, res = rec.get("config"), rec.get("results")
    if isinstance(cfg, dict) and all(isinstance(cfg.get(k), dict) for k in ("optim", "scheme", "task")):
        return "train_run"
    if not isinstance(res, dict):
        return None
    if isinstance(res.get("rows"), list) and "baseline" in res:
        return "memory_sweep"
    if isinstance(res.get("aggregate"), dict) and "test_acc" in res["aggregate"] and isinstance(cfg, dict) \
            and "algo" in cfg:
        return "local_learning"
    if res and all(isinstance(v, dict) and v and all(isinstance(m, dict) and "peak_rss_above_start" in m
                                                      for m in v.values()) for v in res.values()):
        return "local_memory"
    return None


def load_results(path: str | Path, *, strict: bool = False) -> Loaded:
    """Read every ``*.json`` under ``path`` (recursively). Bad files are listed, or raise with ``strict``."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"results directory not found: {root}")
    out = Loaded()
    for p in sorted(root.rglob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            if strict:
                raise UserError(f"{p}: not a readable JSON file: {e}") from None
            out.bad.append((str(p), f"not a readable JSON file: {e}"))
            continue
        kind = kind_of(rec)
        if kind is None:
            out.unrecognised.append(str(p))
            continue
        rec["_path"] = str(p)
        out.records[kind].append(rec)
    return out


# ----------------------------------------------------------------------------- small helpers
def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _pm(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std``; a single value is shown alone (a spread of one is not 0)."""
    vals = [v * scale for v in values if v is not None]
    m, s = mean_std(vals)
    if math.isnan(m):
        return "-"
    return f"{m:.{digits}f}" if len(vals) == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def metric_of(metrics: dict | None) -> tuple[str | None, float | None]:
    """The headline metric of an evaluation: accuracy, else F1, else exact match."""
    if not isinstance(metrics, dict):
        return None, None
    for key in ("accuracy", "f1", "exact_match"):
        if isinstance(metrics.get(key), (int, float)):
            return key, float(metrics[key])
    return None, None


def _table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- training runs
def _with_defaults(cfg: dict) -> dict:
    """A training config with every key the current ``TrainConfig`` has (records written before a key
    existed group with those written after, at that key's default); other configs unchanged."""
    try:
        from ..config import load_config, to_dict
        from ..lm.config import TrainConfig

        return to_dict(load_config(TrainConfig, None, None, base=cfg))
    except Exception:  # not a TrainConfig (local learning, memory records) or from a newer version
        return cfg


def group_runs(runs: list[dict]) -> list[dict]:
    """Runs that differ only in seed (and output directory) form one group, in first-seen order."""
    groups: dict[str, dict] = {}
    for rec in runs:
        full = _with_defaults(rec["config"]) if str(rec.get("name", "")).startswith("zo_bench/") else rec["config"]
        cfg = {k: v for k, v in full.items() if k not in ("seed", "out_dir")}
        key = json.dumps(cfg, sort_keys=True)
        g = groups.setdefault(key, {"name": rec.get("experiment") or rec.get("name", "?"), "config": rec["config"],
                                    "ok": [], "failed": []})
        (g["ok"] if rec.get("status", "ok") == "ok" else g["failed"]).append(rec)
    return list(groups.values())


def _sort_key(g: dict):
    c = g["config"]
    return (c["task"]["name"], c["scheme"]["name"], c["optim"]["name"], c.get("budget_forwards") or 0)


def summarise_group(g: dict) -> dict:
    """Means over the seeds of one group: metric after/before, forwards, times, memory."""
    ok = g["ok"]
    res = [r.get("results", {}) for r in ok]
    name, _ = metric_of(res[0].get("test_after")) if res else (None, None)
    after = [metric_of(r.get("test_after"))[1] for r in res]
    before = [metric_of(r.get("test_before"))[1] for r in res]
    return {
        "metric": name or "-",
        "after": [v for v in after if v is not None],
        "before": [v for v in before if v is not None],
        "forwards": [r.get("forwards") for r in res if r.get("forwards") is not None],
        "train_time_s": [r.get("train_time_s") for r in res if r.get("train_time_s") is not None],
        "wall_time_s": [r.get("wall_time_s") for r in res if r.get("wall_time_s") is not None],
        "peak_rss": [r.get("peak_rss_bytes") for r in res if r.get("peak_rss_bytes")],
        "seeds": sorted(r.get("seed", r["config"].get("seed")) for r in ok),
        "n_failed": len(g["failed"]),
    }


def _section_defaults() -> dict:
    try:
        from ..config import to_dict
        from ..lm.config import TrainConfig

        return to_dict(TrainConfig())
    except Exception:  # pragma: no cover - the training extras are missing
        return {}


def _reference_key(cfg: dict) -> str:
    # keys missing from an older record take today's defaults, so that a run made before a key existed
    # finds the zero-shot run made after it
    defaults = _section_defaults()
    parts = [{**(defaults.get(k) or {}), **cfg[k]} if isinstance(cfg[k], dict) else cfg[k]
             for k in ("model", "scheme", "task")]
    return json.dumps(parts, sort_keys=True)


def trained_groups(runs: list[dict]) -> list[tuple[dict, dict]]:
    """(group, summary) of the groups that trained, sorted. Groups with ``steps: 0`` are zero-shot
    references: a trained group without its own ``test_before`` takes theirs (same model, scheme, task)."""
    groups = group_runs(runs)
    refs = {}
    for g in groups:
        if g["config"].get("steps") == 0:
            refs.setdefault(_reference_key(g["config"]), []).extend(summarise_group(g)["after"])
    out = []
    for g in sorted(groups, key=_sort_key):
        if g["config"].get("steps") == 0:
            continue
        s = summarise_group(g)
        if not s["before"]:
            s["before"], s["before_from"] = refs.get(_reference_key(g["config"]), []), "zero-shot run"
        out.append((g, s))
    return out


def train_table(runs: list[dict]) -> str:
    """Accuracy (mean ± std over seeds, zero-shot beside) per task x scheme x optimizer x budget."""
    head = ["task", "scheme", "optimizer", "lr", "budget (forwards)", "seeds", "metric", "test % (mean ± std)",
            "zero-shot %", "forwards used", "train s / run", "peak RSS MiB", "failed"]
    rows = []
    for g, s in trained_groups(runs):
        c = g["config"]
        fwd = f"{statistics.fmean(s['forwards']):.0f}" if s["forwards"] else "-"
        t = f"{statistics.fmean(s['train_time_s']):.0f}" if s["train_time_s"] else "-"
        mem = f"{max(s['peak_rss']) / MiB:.0f}" if s["peak_rss"] else "-"
        rows.append([c["task"]["name"], c["scheme"]["name"], c["optim"]["name"], f"{c['optim']['lr']:g}",
                     c.get("budget_forwards") or "-", len(s["seeds"]), s["metric"], _pm(s["after"]),
                     _pm(s["before"]), fwd, t, mem, s["n_failed"] or ""])
    return _table(head, rows)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Expired|Interrupt)\b")


def error_summary(error: str, width: int = 200) -> str:
    """The exception line of a traceback (the last line that names one), else its last line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or ["?"]
    named = [line for line in lines if _EXCEPTION_LINE.match(line)]
    line = named[-1] if named else lines[-1]
    return line if len(line) <= width else line[: width - 3] + "..."


def failed_table(runs: list[dict]) -> str:
    rows = [[r.get("experiment") or r.get("name", "?"), r.get("seed", r["config"].get("seed")),
             error_summary(r.get("error", "?")).replace("|", "\\|"), Path(r["_path"]).name]
            for r in runs if r.get("status", "ok") != "ok"]
    return _table(["experiment", "seed", "error", "file"], rows) if rows else ""


# ----------------------------------------------------------------------------- memory sweep
def memory_rows(rec: dict) -> list[dict]:
    return [r for r in rec["results"]["rows"] if r.get("status", "ok") == "ok" and r.get("peak_rss")]


def memory_ratios(rec: dict, point: tuple[int, int] = TARGET_POINT) -> list[dict]:
    """The issue's targets at ``point``: ratios of total peak RSS and of peak RSS above the baseline."""
    at = {r["method"]: r for r in memory_rows(rec) if (r["batch"], r["seq"]) == tuple(point)}
    base = rec["results"].get("baseline") or {}
    out = []
    for num, den, op, bound in TARGETS:
        if num not in at or den not in at:
            continue
        total = at[num]["peak_rss"] / at[den]["peak_rss"]
        above = None
        if base.get("rss"):
            a, b = at[num]["peak_rss"] - base["rss"], at[den]["peak_rss"] - base["rss"]
            above = a / b if b > 0 else math.inf
        met = total >= bound if op == ">=" else total <= bound
        out.append({"ratio": f"{num} / {den}", "target": f"{op} {bound:g}", "total": total, "above": above,
                    "met_on_total": met})
    return out


def memory_table(rec: dict) -> str:
    base = rec["results"].get("baseline") or {}
    rows = []
    def order(r):
        m = r["method"]
        return r["batch"], r["seq"], METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m

    for r in sorted(memory_rows(rec), key=order):
        above = (r["peak_rss"] - base["rss"]) / MiB if base.get("rss") else float("nan")
        rows.append([r["method"], r["batch"], r["seq"], f"{r['peak_rss'] / MiB:.0f}", f"{above:.0f}",
                     f"{r['peak_anon'] / MiB:.0f}" if r.get("peak_anon") else "-",
                     f"{r['step_s']:.1f}" if r.get("step_s") else "-"])
    failed = [r for r in rec["results"]["rows"] if r.get("status", "ok") != "ok"]
    text = _table(["method", "batch", "seq", "peak RSS MiB", "above baseline MiB", "peak anon MiB", "step s"], rows)
    if base.get("rss"):
        text = (f"Baseline (interpreter, libraries, weights paged in; separate process): "
                f"{base['rss'] / MiB:.0f} MiB RSS, {base.get('anon', 0) / MiB:.0f} MiB anonymous.\n\n" + text)
    if failed:
        text += "\n\nFailed points: " + "; ".join(f"{r['method']} {r['batch']}x{r['seq']}: "
                                                  f"{str(r.get('error'))[-200:]}" for r in failed)
    return text


def ratio_table(rec: dict) -> str:
    rows = [[r["ratio"], r["target"], f"{r['total']:.2f}", "-" if r["above"] is None else f"{r['above']:.2f}",
             "met" if r["met_on_total"] else "missed"] for r in memory_ratios(rec)]
    if not rows:
        return ""
    b, s = TARGET_POINT
    return _table([f"ratio at {b}x{s}", "target", "total peak RSS", "peak RSS above baseline",
                   "target (on total peak)"], rows)


# ----------------------------------------------------------------------------- local learning
def local_table(recs: list[dict], mem: list[dict]) -> str:
    memory = {}
    for m in mem:
        for arch, methods in m["results"].items():
            for exp, v in methods.items():
                memory.setdefault(exp, {})[arch] = v["peak_rss_above_start"]  # keyed by experiment name
    archs = sorted({a for v in memory.values() for a in v})
    rows = []
    for rec in sorted(recs, key=lambda r: r.get("name", "")):
        agg, cfg = rec["results"]["aggregate"], rec["config"]
        hidden = "x".join(str(h) for h in cfg.get("hidden", []))
        algo = cfg["algo"]
        name = rec.get("name", Path(rec["_path"]).stem).split("/")[-1]
        # memory is measured per experiment (or per algorithm) on the memory script's own MLPs
        measured = memory.get(name) or memory.get(algo, {})
        row = [name, algo, hidden, agg["test_acc"].get("n", "?"),
               _pm(agg["test_acc"]["values"], digits=2),
               _pm(agg["epochs_run"]["values"], 1) if "epochs_run" in agg else "-",
               _pm(agg["seconds_per_epoch"]["values"], 1) if "seconds_per_epoch" in agg else "-"]
        row += [f"{measured[a] / MiB:.0f}" if a in measured else "-" for a in archs]
        rows.append(row)
    head = ["experiment", "algorithm", "hidden", "seeds", "test acc. % (mean ± std)", "epochs", "s / epoch"]
    head += [f"peak mem. above start MiB, {a} (memory script's MLP)" for a in archs]
    return _table(head, rows)


# ----------------------------------------------------------------------------- the whole report
def render_markdown(loaded: Loaded, plots: list[str] | None = None, link_prefix: str = "") -> str:
    """The report as Markdown: one section per kind present, then the plots and the files skipped.

    Plots are linked as ``link_prefix + file name`` (the prefix places them relative to the Markdown file)."""
    from .convergence import SUITE
    from .convergence import render as convergence_section

    r = loaded.records
    parts = []
    runs = [x for x in r["train_run"] if not str(x.get("name", "")).startswith(SUITE)]
    if runs:
        n_ok = sum(1 for x in runs if x.get("status", "ok") == "ok")
        parts.append(f"## Accuracy per task x scheme x optimizer\n\n{n_ok} finished runs, "
                     f"{len(runs) - n_ok} failed. Test metric in % (mean ± std over seeds); "
                     "zero-shot is the same model before training.\n\n" + train_table(runs))
    if len(runs) < len(r["train_run"]):  # the convergence suite's records: curves, not one number per run
        parts.append(convergence_section(r["train_run"]))
    if r["train_run"]:
        failed = failed_table(r["train_run"])
        if failed:
            parts.append("### Failed runs\n\n" + failed)
    for rec in r["memory_sweep"]:
        ratios = ratio_table(rec)
        parts.append(f"## Memory ({Path(rec['_path']).name})\n\n" + memory_table(rec)
                     + ("\n\n" + ratios if ratios else ""))
    if r["local_learning"] or r["local_memory"]:
        parts.append("## Local learning\n\n" + local_table(r["local_learning"], r["local_memory"]))
    if plots:
        parts.append("## Plots\n\n" + "\n".join(f"![{Path(p).stem}]({link_prefix}{Path(p).name})" for p in plots))
    if loaded.bad or loaded.unrecognised:
        lines = [f"* `{p}`: {why}" for p, why in loaded.bad]
        lines += [f"* `{p}`: not a result record this report knows" for p in loaded.unrecognised]
        parts.append("## Files skipped\n\n" + "\n".join(lines))
    if not parts:
        return "No result records found.\n"
    return "\n\n".join(parts) + "\n"
