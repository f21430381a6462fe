import pytest


@pytest.fixture
def cfg_of(tiny_dir):
    """``cfg_of("steps=3", ...)``: a TrainConfig on the tiny model with small splits."""
    from forwardonly.config import load_config
    from forwardonly.lm.config import TrainConfig

    def make(*extra):
        return load_config(TrainConfig, None, overrides(tiny_dir, *extra))

    return make


@pytest.fixture
def ov(tiny_dir):
    """``ov("steps=3", ...)``: command-line overrides for a run on the tiny model."""
    return lambda *extra: overrides(tiny_dir, *extra)


def overrides(tiny_dir, *extra):
    return [f"model.name={tiny_dir}", "task.max_train=64", "task.max_eval=16", "task.max_test=16",
            "batch_size=4", "eval_batch_size=8", "log_every=2", "threads=1", *extra]
