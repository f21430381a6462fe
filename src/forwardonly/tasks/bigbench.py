"""BIG-bench tasks: extraction from a BIG-bench source, and the shipped subsets.

BIG-bench keeps each task as ``bigbench/benchmark_tasks/<task>/task.json``. The package index
no longer serves the ``bigbench==1.0.0`` source distribution that carried them (only 0.0.1,
which has the task code but no task data), so nothing here downloads: :func:`extract` reads
the four tasks forwardonly uses from a source the user has - a checkout of the BIG-bench
repository (``git clone https://github.com/google/BIG-bench``), a tarball of it, or a
``bigbench-1.0.0.tar.gz`` kept from before - converts them to forwardonly's row format, and
splits them with a fixed seed. Any other data comes in as a task's own files
(``task.data.train=FILE``; see :class:`forwardonly.lm.config.TaskConfig`). The shipped subsets under ``tasks/builtin/`` are made by the same
code (:func:`build_builtin`): their test split is the full test split and
their train/validation splits are prefixes of the full ones, so numbers on the
shipped and the full data are comparable.
"""

from __future__ import annotations

import json
import random
import tarfile
from pathlib import Path

from ..errors import UserError

TASKS_DIR = "bigbench/benchmark_tasks"
HOW = ("pass --from a BIG-bench checkout (git clone https://github.com/google/BIG-bench), a tarball of it or a "
       "bigbench-1.0.0.tar.gz; or bring the data as your own files: task.data.train=FILE task.data.test=FILE")

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


def read_source(source: str | Path, names=tuple(TASKS)) -> dict[str, dict]:
    """The raw ``task.json`` of each task in ``names``, from a BIG-bench checkout directory or a tarball
    (read without unpacking it)."""
    source = Path(source).expanduser()
    if not source.exists():
        raise UserError(f"BIG-bench source not found: {source}; {HOW}")
    wanted = {f"{TASKS_DIR}/{TASKS[n][0]}": n for n in names}
    out = {}
    if source.is_dir():
        for suffix, name in wanted.items():  # the checkout, its bigbench/ or its benchmark_tasks/ folder
            hits = [p for p in (source / suffix, source / suffix.split("/", 1)[1], source / TASKS[name][0])
                    if p.is_file()]
            if hits:
                out[name] = _json(hits[0].read_bytes(), hits[0])
    else:
        try:
            with tarfile.open(source, "r:*") as tar:
                for member in tar:
                    suffix = next((w for w in wanted if member.name.endswith("/" + w)), None)
                    if suffix is not None:
                        out[wanted[suffix]] = _json(tar.extractfile(member).read(), f"{source}:{member.name}")
                        if len(out) == len(wanted):
                            break
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            raise UserError(f"{source}: not a readable BIG-bench tarball ({e})") from None
    missing = sorted(set(names) - set(out))
    if missing:
        raise UserError(f"{source}: task(s) {missing} not found under {TASKS_DIR}/; {HOW}")
    return out


def _json(raw: bytes, where) -> dict:
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{where}:{line}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{where}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise UserError(f"{where}: not a BIG-bench task.json (no examples list)")
    return data


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
        raise UserError(f"BIG-bench task {name!r} is not fetched ({path}); run: forwardonly data fetch bigbench "
                        f"--from PATH ({HOW})")
    return path


def extract(source: str | Path | None, out_dir: str | Path | None = None, log=lambda m: None) -> dict:
    """Write the full tasks (JSONL per split plus a task YAML) to ``out_dir``; returns sizes per task.

    ``source``: a BIG-bench checkout, a tarball of it, or the ``bigbench-1.0.0`` sdist.
    """
    from ..io import atomic_path, atomic_write_text
    from .data import write_jsonl

    if source is None:
        raise UserError("the full BIG-bench tasks cannot be downloaded from the package index any more "
                        f"(it serves only bigbench 0.0.1, which has no task data): {HOW}")
    out_dir = Path(out_dir) if out_dir else data_dir()
    raw = read_source(source)
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


def build_builtin(source: str | Path, out_dir: str | Path) -> dict:
    """Regenerate the shipped subsets (maintainers only): ``<name>.<split>.jsonl``."""
    from .data import write_jsonl

    out_dir = Path(out_dir)
    sizes = {}
    for name, task_json in read_source(source).items():
        parts = split(name, convert(name, task_json))
        parts["train"] = parts["train"][:TASKS[name][3]]
        for s, rows in parts.items():
            write_jsonl(out_dir / f"{name}.{s}.jsonl", rows)
        sizes[name] = {s: len(r) for s, r in parts.items()}
    return sizes
