"""BIG-bench tasks: extraction from the bigbench 1.0.0 sdist, and the shipped subsets.

The sdist (``pip download bigbench==1.0.0 --no-deps --no-binary :all:``, never
installed) carries each task as ``bigbench/benchmark_tasks/<task>/task.json``.
:func:`extract` reads the four tasks forwardonly uses straight out of the
tarball, converts them to forwardonly's row format, and splits them with a
fixed seed. The shipped subsets under ``tasks/builtin/`` are made by the same
code (:func:`build_builtin`): their test split is the full test split and
their train/validation splits are prefixes of the full ones, so numbers on the
shipped and the full data are comparable.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..errors import UserError

SDIST = "bigbench-1.0.0.tar.gz"
ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks"

# name -> (task.json inside the sdist, test size, validation size, shipped train size)
TASKS = {
    "sentiment": ("multiemo/all_sentence_en/task.json", 400, 200, 1200),
    "social_iqa": ("social_iqa/task.json", 400, 100, 600),
    "strategyqa": ("strategyqa/task.json", 400, 100, 600),
    "disfl_qa": ("disfl_qa/task.json", 200, 100, 300),
}
SEED = 1234


def _best(target_scores: dict) -> str:
    return max(target_scores, key=target_scores.get)


def convert(name: str, task_json: dict) -> list[dict]:
    """BIG-bench examples of task ``name`` as forwardonly rows (deduplicated)."""
    rows, seen = [], set()
    for ex in task_json["examples"]:
        inp = ex["input"].strip()
        if name == "sentiment":
            label = _best(ex["target_scores"])
            if label not in ("positive", "negative"):
                continue  # the binary task: neutral and ambivalent sentences are dropped
            row = {"text": inp, "label": label}
        elif name == "social_iqa":
            options = list(ex["target_scores"])
            row = {"question": inp, "options": options, "answer": options.index(_best(ex["target_scores"]))}
        elif name == "strategyqa":
            row = {"question": inp, "label": _best(ex["target_scores"]).lower()}
        elif name == "disfl_qa":
            question, _, context = ex["input"].partition("\ncontext:")
            row = {"question": question.strip(), "context": context.strip(), "answers": [ex["target"].strip()]}
        else:
            raise KeyError(name)
        key = json.dumps(row, sort_keys=True) if name != "sentiment" else inp
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    return rows


def split(name: str, rows: list[dict]) -> dict[str, list[dict]]:
    _, n_test, n_val, _ = TASKS[name]
    rows = list(rows)
    random.Random(SEED).shuffle(rows)
    return {"test": rows[:n_test], "validation": rows[n_test:n_test + n_val], "train": rows[n_test + n_val:]}


def read_sdist(sdist: str | Path, names=tuple(TASKS)) -> dict[str, dict]:
    """The raw ``task.json`` of each task in ``names``, read from the tarball without unpacking it."""
    sdist = Path(sdist)
    if not sdist.is_file():
        raise UserError(f"bigbench sdist not found: {sdist}")
    wanted = {f"{ROOT}/{TASKS[n][0]}": n for n in names}
    out = {}
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                if member.name in wanted:
                    out[wanted[member.name]] = json.load(tar.extractfile(member))
                    if len(out) == len(wanted):
                        break
    except (tarfile.TarError, OSError, ValueError) as e:
        raise UserError(f"{sdist}: not a readable bigbench sdist ({e})") from None
    missing = sorted(set(names) - set(out))
    if missing:
        raise UserError(f"{sdist}: task(s) {missing} not found; is this bigbench 1.0.0?")
    return out


def download_sdist(dest_dir: Path) -> Path:
    """``pip download`` the bigbench 1.0.0 sdist (no dependencies, not installed)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "-d", str(dest_dir), "bigbench==1.0.0"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    path = dest_dir / SDIST
    if r.returncode != 0 or not path.is_file():
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"could not download bigbench==1.0.0 ({last[0]}); download it by hand and pass "
                        f"--sdist PATH")
    return path


def _yaml_text(name: str, files: dict[str, str], comment: str) -> str:
    # Same name, kind and template as the shipped task; only the data files differ.
    import yaml

    from .task import BUILTIN_DIR

    spec = yaml.safe_load((BUILTIN_DIR / f"{name}.yaml").read_text())
    spec["data"] = files
    return f"# {comment}\n" + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


def data_dir() -> Path:
    from ..io import cache_root

    return cache_root() / "data" / "bigbench"


def fetched_yaml(name: str) -> Path:
    if name not in TASKS:
        raise UserError(f"unknown BIG-bench task {name!r}; known: {', '.join(TASKS)}")
    path = data_dir() / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"BIG-bench task {name!r} is not fetched ({path}); run: forwardonly data fetch bigbench")
    return path


def extract(sdist: str | Path | None = None, out_dir: str | Path | None = None, log=lambda m: None) -> dict:
    """Write the full tasks (JSONL per split plus a task YAML) to ``out_dir``; returns sizes per task."""
    from ..io import atomic_path, atomic_write_text
    from .data import write_jsonl

    out_dir = Path(out_dir) if out_dir else data_dir()
    with tempfile.TemporaryDirectory(prefix="forwardonly-bigbench-") as scratch:
        if sdist is None:
            log("downloading bigbench==1.0.0 sdist (not installed) ...")
            sdist = download_sdist(Path(scratch))
        raw = read_sdist(sdist)
    sizes = {}
    for name, task_json in raw.items():
        parts = split(name, convert(name, task_json))
        with atomic_path(out_dir / name) as tmp:
            tmp.mkdir()
            for s, rows in parts.items():
                write_jsonl(tmp / f"{s}.jsonl", rows)
        files = {s: f"{name}/{s}.jsonl" for s in ("train", "validation", "test")}
        atomic_write_text(out_dir / f"{name}.yaml",
                          _yaml_text(name, files, f"forwardonly eval task=bigbench/{name}  (full BIG-bench data)"))
        sizes[name] = {s: len(r) for s, r in parts.items()}
        log(f"{name}: " + ", ".join(f"{s} {n}" for s, n in sizes[name].items()))
    return sizes


def build_builtin(sdist: str | Path, out_dir: str | Path) -> dict:
    """Regenerate the shipped subsets (maintainers only): ``<name>.<split>.jsonl``."""
    from .data import write_jsonl

    out_dir = Path(out_dir)
    sizes = {}
    for name, task_json in read_sdist(sdist).items():
        parts = split(name, convert(name, task_json))
        parts["train"] = parts["train"][:TASKS[name][3]]
        for s, rows in parts.items():
            write_jsonl(out_dir / f"{name}.{s}.jsonl", rows)
        sizes[name] = {s: len(r) for s, r in parts.items()}
    return sizes
