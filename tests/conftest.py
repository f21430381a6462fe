import os
import sys
from pathlib import Path

import pytest

# Tests run against the checkout even where forwardonly is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama saved as a Hugging Face directory (what users point model.name at)."""
    from forwardonly.models import tiny_model

    path = tmp_path_factory.mktemp("tiny-llama")
    model, tok = tiny_model("llama", seed=0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
