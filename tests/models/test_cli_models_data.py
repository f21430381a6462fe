"""The ``models`` and ``data`` subcommands."""

import pytest

from forwardonly.cli.main import main


def test_models_list(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FORWARDONLY_CACHE", str(tmp_path))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("smollm2-135m", "gemma3-270m", "minilm-l6"):
        assert name in out
    assert str(tmp_path) in out


def test_models_fetch_unknown(capsys):
    assert main(["models", "fetch", "gpt-5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("forwardonly models: error: unknown zoo model 'gpt-5'") and "\n" not in err


def test_data_list(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FORWARDONLY_CACHE", str(tmp_path))
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "sentiment" in out and "test 400" in out


def test_data_fetch_errors(capsys, tmp_path):
    assert main(["data", "fetch", "glue"]) == 2
    assert "unknown data source 'glue'" in capsys.readouterr().err
    assert main(["data", "fetch", "bigbench", "--from", str(tmp_path / "nope.tar.gz")]) == 2
    assert "BIG-bench source not found" in capsys.readouterr().err
    assert main(["data", "fetch", "bigbench"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be downloaded" in err and "git clone https://github.com/google/BIG-bench" in err and "\n" not in err


@pytest.mark.model
def test_models_fetch_cached_prints_path(capsys):
    from forwardonly.models import zoo

    if zoo.cached("smollm2-135m") is None:
        pytest.skip("smollm2-135m not cached")
    assert main(["models", "fetch", "smollm2-135m", "--no-install"]) == 0
    assert capsys.readouterr().out.strip() == str(zoo.cached("smollm2-135m"))
