"""Command-line conventions: overrides anywhere, --print-config, shipped configs by name (and in the
wheel), Hugging Face-style flags, the out_dir spelling, and one-line answers to unknown flags."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from forwardonly.cli.common import shipped_configs
from forwardonly.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def _config(capsys, argv):
    assert main([*argv, "--print-config"]) == 0
    captured = capsys.readouterr()
    return yaml.safe_load(captured.out), captured.err


def test_overrides_and_flags_in_any_order(capsys):
    a, _ = _config(capsys, ["train", "out_dir=x", "--resume", "steps=12", "--config", "lm/sentiment-smollm2-zo-lora"])
    b, _ = _config(capsys, ["train", "--config", "lm/sentiment-smollm2-zo-lora", "steps=12", "out_dir=x", "--resume"])
    assert a == b and a["steps"] == 12 and a["out_dir"] == "x" and a["optim"]["name"] == "zo-adam"


def test_print_config_is_the_resolved_config(capsys):
    cfg, _ = _config(capsys, ["train", "--config", "lm/sentiment-smollm2-zo-lora", "optim.lr=5e-4"])
    shipped = yaml.safe_load(shipped_configs()["lm/sentiment-smollm2-zo-lora"].read_text())
    assert cfg["optim"]["lr"] == 5e-4 and cfg["scheme"] == {**cfg["scheme"], **shipped["scheme"]}
    assert cfg["task"]["max_length"] == shipped["task"]["max_length"] and cfg["task"]["val_fraction"] == 0.1


def test_named_sections_take_a_name(capsys):
    cfg, _ = _config(capsys, ["eval", "model=foo", "task=strategyqa", "task.max_test=5", "optim=zo-adam"])
    assert cfg["model"]["name"] == "foo" and cfg["task"]["name"] == "strategyqa" and cfg["task"]["max_test"] == 5
    assert cfg["optim"]["name"] == "zo-adam"


def test_hugging_face_flags_are_read_with_a_note(capsys):
    cfg, err = _config(capsys, ["train", "--model_name_or_path", "m", "--learning_rate=3e-4", "--output_dir", "o",
                                "--max_steps", "7", "--per_device_train_batch_size", "2"])
    assert (cfg["model"]["name"], cfg["optim"]["lr"], cfg["out_dir"], cfg["steps"], cfg["batch_size"]) == \
        ("m", 3e-4, "o", 7, 2)
    assert "--learning_rate read as optim.lr=3e-4" in err and len(err.strip().splitlines()) == 5


@pytest.mark.parametrize("argv,hint", [
    (["train", "--steps", "3"], "config keys are set as key=value, e.g. steps=..."),
    (["train", "--num_train_epochs", "3"], "use steps=N"),
    (["train", "--eval-every", "3"], "e.g. eval_every=..."),
    (["eval", "--lr", "3"], None),  # an alias: accepted
    (["train", "--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_unknown_flags_get_one_line(capsys, argv, hint):
    code = main([*argv, "--print-config"])
    err = capsys.readouterr().err.strip()
    if hint is None:
        assert code == 0
        return
    assert code == 2 and hint in err and len(err.splitlines()) == 1, err


def test_out_dir_is_the_spelling_and_out_is_deprecated(capsys, tmp_path):
    cfg, err = _config(capsys, ["local", "train", "--algo", "mf", "--out", "runs/x"])
    assert cfg["out_dir"] == "runs/x" and "--out is deprecated; use out_dir=runs/x" in err
    cfg, err = _config(capsys, ["local", "train", "--algo", "mf", "out_dir=runs/y"])
    assert cfg["out_dir"] == "runs/y" and "deprecated" not in err
    results = tmp_path / "results"
    results.mkdir()
    assert main(["report", str(results), f"out_dir={tmp_path / 'rep'}", "--no-plots"]) == 0
    assert (tmp_path / "rep" / "report.md").is_file()


def test_configs_list_and_cp(capsys, tmp_path):
    assert main(["configs", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in shipped_configs()) and "lm/sentiment-smollm2-zo-lora" in listed
    assert main(["configs", "cp", "sentiment-smollm2-zo-lora", str(tmp_path)]) == 0
    copy = tmp_path / "sentiment-smollm2-zo-lora.yaml"
    assert copy.read_text() == shipped_configs()["lm/sentiment-smollm2-zo-lora"].read_text()
    copy.write_text("steps: 1\n")
    assert main(["configs", "cp", "lm/sentiment-smollm2-zo-lora", str(copy)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and copy.read_text() == "steps: 1\n"
    assert main(["configs", "cp", "nope", str(tmp_path / "x.yaml")]) == 2
    assert "no shipped config 'nope'" in capsys.readouterr().err


def test_missing_config_names_the_shipped_ones(capsys):
    assert main(["train", "--config", "lm/nope"]) == 2
    assert "config file not found: lm/nope (nor a shipped config; see: forwardonly configs list)" in \
        capsys.readouterr().err


@pytest.mark.integration
def test_shipped_configs_are_in_the_wheel(tmp_path):
    import shutil

    tree = tmp_path / "tree"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(tree)], capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("forwardonly-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in shipped_configs():
        assert f"forwardonly/configs/{name}.yaml" in names, name
    assert len(shipped_configs()) >= 16
