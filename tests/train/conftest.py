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


@pytest.fixture
def full_and_resumed(cfg_of, tmp_path, monkeypatch):
    """``(full, resumed)``: the run of ``common`` uninterrupted (``out_dir`` a), and the same run stopped by a
    KeyboardInterrupt at the start of step ``crash_at`` and then resumed (``out_dir`` b)."""
    def go(common: tuple, crash_at: int):
        import forwardonly.lm.train as train_mod
        from forwardonly.lm import run

        full = run(cfg_of(*common, f"out_dir={tmp_path / 'a'}"), progress=False)
        real = train_mod._zo_step

        def crash(opt, model, objective, batches, seedlog, t):
            if t == crash_at:
                raise KeyboardInterrupt
            return real(opt, model, objective, batches, seedlog, t)

        monkeypatch.setattr(train_mod, "_zo_step", crash)
        with pytest.raises(KeyboardInterrupt):
            run(cfg_of(*common, f"out_dir={tmp_path / 'b'}"), progress=False)
        monkeypatch.setattr(train_mod, "_zo_step", real)
        return full, run(cfg_of(*common, f"out_dir={tmp_path / 'b'}"), resume=True, progress=False)

    return go
