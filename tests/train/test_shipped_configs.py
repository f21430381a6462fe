"""Every shipped LM config loads, and its first line is the command that runs it."""

from pathlib import Path

import pytest

from forwardonly.config import load_config
from forwardonly.lm.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "src" / "forwardonly" / "configs"
SHIPPED = sorted((CONFIGS / "lm").glob("*.yaml")) + [CONFIGS / "demo.yaml"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads_and_names_its_command(path):
    cfg = load_config(TrainConfig, path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# forwardonly "), first
    assert cfg.steps > 0 and cfg.model.name


def test_there_are_shipped_configs():
    assert len(SHIPPED) >= 5
