"""Data loaders: IDX parsing, install hints, MNIST CSVs, splits."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from forwardonly.errors import UserError
from forwardonly.local.data import load_dataset, read_idx


def _write_idx(path, arr: np.ndarray):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fake_fashion(root, n_train=40, n_test=20):
    rng = np.random.default_rng(0)
    _write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (n_train, 28, 28)))
    _write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    _write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (n_test, 28, 28)))
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)


def test_fashion_from_data_dir(tmp_path):
    _fake_fashion(tmp_path)
    d = load_dataset("fashion-mnist", str(tmp_path), val_fraction=0.25)
    assert d.x_train.shape == (30, 784) and d.x_val.shape == (10, 784) and d.x_test.shape == (20, 784)
    assert d.n_classes == 10 and abs(float(d.x_train.mean())) < 1e-5


def test_idx_errors_name_the_file(tmp_path):
    bad = tmp_path / "x.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(UserError, match="x.gz"):
        read_idx(bad)
    short = tmp_path / "y.gz"
    _write_idx(short, np.zeros(5))
    with gzip.open(short) as f:
        raw = f.read()
    with gzip.open(short, "wb") as f:
        f.write(raw[:-2])
    with pytest.raises(UserError, match="holds 3 bytes"):
        read_idx(short)


def test_missing_fashion_gives_install_command(tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", str(tmp_path))


def test_mnist_csv_from_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    header = "label," + ",".join(f"p{i}" for i in range(784))
    for name, n in (("mnist_train.csv", 30), ("mnist_test.csv", 10)):
        rows = [",".join([str(i % 10)] + ["7"] * 784) for i in range(n)]
        (tmp_path / name).write_text("\n".join([header, *rows]) + "\n")
    d = load_dataset("mnist", str(tmp_path), val_fraction=0.0)
    assert d.x_train.shape == (30, 784) and d.y_test.tolist() == [i % 10 for i in range(10)]


def test_split_is_seeded_and_disjoint():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=0)
    assert (a.y_val == b.y_val).all() and len(a.y_train) + len(a.y_val) == 1347


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown data set"):
        load_dataset("imagenet")


def _fake_cifar_bin(root, ten=True, n=6):
    rng = np.random.default_rng(1)
    d = root / ("cifar-10-batches-bin" if ten else "cifar-100-binary")
    d.mkdir()
    lab = 1 if ten else 2
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"] if ten else ["train.bin", "test.bin"]
    for j, name in enumerate(names):
        rec = rng.integers(0, 255, (n, lab + 3072)).astype(np.uint8)
        rec[:, lab - 1] = (np.arange(n) + j) % (10 if ten else 100)  # the (fine) label
        if not ten:
            rec[:, 0] = 3  # coarse label: must not be the one used
        rec.tofile(d / name)
    return d


@pytest.mark.parametrize("ten", [True, False])
def test_cifar_binary_release(tmp_path, ten):
    _fake_cifar_bin(tmp_path, ten)
    d = load_dataset("cifar10" if ten else "cifar100", str(tmp_path), val_fraction=0.0)
    assert d.x_train.shape == ((30 if ten else 6), 3072) and d.shape == (3, 32, 32)
    assert d.y_test.tolist() == [(i + (5 if ten else 1)) % (10 if ten else 100) for i in range(6)]


def test_cifar_binary_truncated_file_is_named(tmp_path):
    d = _fake_cifar_bin(tmp_path)
    (d / "test_batch.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(UserError, match="test_batch.bin: 3000 bytes is not a whole number of 3073-byte"):
        load_dataset("cifar10", str(tmp_path))


def test_cifar_python_release_reads_arrays(tmp_path):
    import pickle

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(2)
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        batch = {b"data": rng.integers(0, 255, (4, 3072)).astype(np.uint8), b"labels": [i % 10] * 4,
                 b"batch_label": b"x", b"filenames": [b"a.png"] * 4}
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))
    data = load_dataset("cifar10", str(tmp_path), val_fraction=0.0)
    assert data.x_train.shape == (20, 3072) and data.y_test.tolist() == [5] * 4


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return os.mkdir, (self.path,)


def test_crafted_pickle_is_refused_before_it_runs(tmp_path):
    import pickle

    from forwardonly.local.data import safe_unpickle

    marker = tmp_path / "ran"
    bad = tmp_path / "cifar-10-batches-py"
    bad.mkdir()
    (bad / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(str(marker)), b"labels": [0]}, protocol=2))
    with pytest.raises(UserError, match=r"data_batch_1: not a CIFAR python batch \(refused global (posix|os)\.mkdir"):
        load_dataset("cifar10", str(tmp_path))
    assert not marker.exists()
    obj = tmp_path / "obj"
    obj.write_bytes(pickle.dumps({b"data": np.array([object()], dtype=object)}))
    with pytest.raises(UserError, match="obj: not a CIFAR python batch"):
        safe_unpickle(obj)


def test_missing_cifar_says_what_is_needed(tmp_path):
    with pytest.raises(UserError, match="cifar100 needs --data-dir DIR containing cifar-100-binary/"):
        load_dataset("cifar100", str(tmp_path))
