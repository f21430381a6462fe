import importlib.util
import os
import sys
from pathlib import Path

import pytest

# Tests run against the checkout even where forwardonly is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def benchmark_script():
    """``benchmark_script("convergence/run.py")``: a script of ``benchmarks/`` loaded as a fresh module."""
    def load(rel: str):
        name = "bench_" + rel.removesuffix(".py").replace("/", "_")
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / rel)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
        return mod
    return load


def _saved_tiny(tmp_path_factory, kind: str):
    from forwardonly.models import tiny_model

    path = tmp_path_factory.mktemp(f"tiny-{kind}")
    model, tok = tiny_model(kind, seed=0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama saved as a Hugging Face directory (what users point model.name at)."""
    return _saved_tiny(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A tiny random BERT sequence classifier saved as a Hugging Face directory."""
    return _saved_tiny(tmp_path_factory, "bert")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With FORWARDONLY_REQUIRE_MODELS=1 (CI sets it after converting the model), a test skipped because a zoo
    model is not cached fails instead: CI runs every real-model test, none is skipped for want of a model."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and os.environ.get("FORWARDONLY_REQUIRE_MODELS") == "1" and "not cached" in str(rep.longrepr):
        rep.outcome = "failed"
        rep.longrepr = f"FORWARDONLY_REQUIRE_MODELS=1 but the model is not cached: {rep.longrepr}"
