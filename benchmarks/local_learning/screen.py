"""Validation screens: one base experiment, one change per screen, ranked on validation only.

Usage (from the repository root)::

    PYTHONPATH=src python benchmarks/local_learning/screen.py screens/ff-round5.yaml
    PYTHONPATH=src python benchmarks/local_learning/screen.py screens/ff-round5.yaml --only baseline,lr_2e-3

A screen file (YAML, in ``screens/``) names the base experiment, the overrides every
screen shares (a seed that is not a benchmark seed, an epoch count, no early stopping),
the epochs whose validation scores are averaged (``window``), the metric that ranks
the screens (``select``, a key of the trainer's history such as ``val_acc`` or
``val_acc_combined``) and the screens, each a list of ``key=value`` overrides.

The test split is never read: each run gets the data with its test split emptied and
trains with ``score_test=False``. The record (``screens/results/<file>.<UTC time>.json``,
never overwritten) holds every screen's validation history, its best and window-mean
score for every validation metric, and the screen the ``select`` metric chose.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def load_screen_file(path: Path) -> dict:
    """The screen file, checked: keys, types, window, and every screen's overrides parse."""
    from forwardonly.config import load_config
    from forwardonly.errors import UserError
    from forwardonly.local.config import LocalConfig

    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read screen file: {e}") from None
    want = {"base", "overrides", "window", "select", "screens"}
    if not isinstance(spec, dict) or set(spec) - want or not {"base", "screens"} <= set(spec):
        raise UserError(f"{path}: a screen file has keys {sorted(want)} (base and screens required)")
    spec.setdefault("overrides", [])
    spec.setdefault("select", "val_acc")
    spec["base_path"] = (path.parent / spec["base"]).resolve()
    window = spec.setdefault("window", None)
    if window is not None and (len(window) != 2 or not 1 <= window[0] <= window[1]):
        raise UserError(f"{path}: window={window} must be [first, last] epochs, 1 <= first <= last")
    for name, over in spec["screens"].items():
        if not isinstance(over, list):
            raise UserError(f"{path}: screen {name!r} must be a list of key=value overrides")
        cfg = load_config(LocalConfig, spec["base_path"], [*spec["overrides"], *over])
        if window and window[1] > cfg.epochs:
            raise UserError(f"{path}: window ends at epoch {window[1]} but screen {name!r} runs {cfg.epochs}")
    return spec


def without_test(data):
    """The same data with an empty test split: a screen cannot score what it does not hold."""
    return dataclasses.replace(data, x_test=data.x_test[:0], y_test=data.y_test[:0])


def summarise(history: list[dict], window: list[int] | None) -> dict:
    keys = sorted(k for k in history[0] if k.startswith("val_acc"))
    out = {}
    for k in keys:
        vals = [r[k] for r in history]
        best = max(range(len(vals)), key=vals.__getitem__)
        row = {"best": vals[best], "best_epoch": best + 1}
        if window:
            row["window_mean"] = statistics.fmean(vals[window[0] - 1:window[1]])
        out[k] = row
    return out


def run_screen(spec: dict, overrides: list[str], data_cache: dict) -> dict:
    from forwardonly.config import load_config, to_dict
    from forwardonly.local.config import LocalConfig
    from forwardonly.local.data import load_dataset
    from forwardonly.local.trainer import train

    cfg = load_config(LocalConfig, spec["base_path"], [*spec["overrides"], *overrides])
    key = (cfg.data, cfg.data_dir, cfg.val_fraction, cfg.limit_train)
    if key not in data_cache:
        data_cache[key] = without_test(load_dataset(*key))
    summary = train(cfg, data=data_cache[key], score_test=False)
    assert not any(k.startswith("test_acc") for k in summary)  # nothing of the test split came back
    return {"overrides": overrides, "config": to_dict(cfg), "history": summary["history"],
            "summary": summarise(summary["history"], spec["window"]),
            "seconds_per_epoch": summary["seconds_per_epoch"], "epochs_run": summary["epochs_run"]}


def choose(screens: dict, select: str, window: list[int] | None) -> str:
    stat = "window_mean" if window else "best"
    return max(screens, key=lambda n: screens[n]["summary"][select][stat])


def main(argv=None) -> int:
    from forwardonly.bench.record import command_info, make_record, new_record_path, write_record

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("screen_file", help="a YAML screen file, e.g. screens/ff-round5.yaml")
    ap.add_argument("--only", help="comma-separated screen names (default: all)")
    ap.add_argument("--out-dir", default=str(HERE / "screens" / "results"))
    args = ap.parse_args(argv)
    path = Path(args.screen_file)
    if not path.is_file() and (HERE / path).is_file():
        path = HERE / path
    spec = load_screen_file(path)
    names = list(spec["screens"])
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    import torch

    torch.set_num_threads(1)
    results, cache, t0 = {}, {}, time.time()
    for name in names:
        results[name] = run_screen(spec, spec["screens"][name], cache)
        s = results[name]["summary"][spec["select"]]
        print(f"{name}: {spec['select']} best {s['best']:.4f} (epoch {s['best_epoch']})"
              + (f", window mean {s['window_mean']:.4f}" if "window_mean" in s else ""), flush=True)
    chosen = choose(results, spec["select"], spec["window"])
    print(f"chosen on validation: {chosen}", flush=True)
    out = new_record_path(args.out_dir, path.stem)  # a new file each run
    rec = make_record(f"local_learning/screen/{path.stem}",
                      {k: spec[k] for k in ("base", "overrides", "window", "select", "screens")},
                      {"screens": results, "chosen": chosen, "test_split_read": False},
                      command=command_info(None if argv is None else [__file__, *argv]),  # called as a function too
                      screen_file=str(path.relative_to(HERE)) if path.is_relative_to(HERE) else str(path),
                      wall_seconds=time.time() - t0)
    write_record(out, rec)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from forwardonly.errors import script_main

    sys.exit(script_main(main))
