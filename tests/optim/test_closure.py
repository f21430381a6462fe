"""Python-API mistakes explained in one line: closures that call backward(), ModelOutputs, missing extras."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forwardonly.optim import ZOSGD, build_optimizer

SRC = Path(__file__).resolve().parents[2] / "src"


def _problem():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    return model, x, y


@pytest.mark.parametrize("name", ["zo-sgd", "zo-adam", "forward-grad"])
def test_a_closure_that_calls_backward_is_explained(name):
    model, x, y = _problem()
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(name, model.parameters(), lr=1e-2)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match=r"called backward\(\): it must run the forward pass only") as e:
        opt.step(closure)
    assert "\n" not in str(e.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing applied


def test_a_model_output_with_a_loss_is_accepted():
    from transformers.modeling_outputs import CausalLMOutput

    def run(wrap):
        model, x, y = _problem()
        opt = ZOSGD(model.parameters(), lr=1e-2, seed=0)
        for _ in range(3):
            opt.step(lambda: wrap(torch.nn.functional.mse_loss(model(x), y)))
        return [p.detach() for p in model.parameters()]

    plain = run(lambda loss: loss)
    wrapped = run(lambda loss: CausalLMOutput(loss=loss, logits=torch.zeros(1)))
    assert all(torch.equal(a, b) for a, b in zip(plain, wrapped))


def test_a_model_output_without_a_loss_is_one_line():
    from transformers.modeling_outputs import CausalLMOutput

    model, x, _ = _problem()
    opt = ZOSGD(model.parameters(), lr=1e-2)
    with pytest.raises(ValueError, match="returned a model output without a loss: pass labels"):
        opt.step(lambda: CausalLMOutput(logits=model(x)))


def test_accumulating_closures_take_model_outputs_too():
    from transformers.modeling_outputs import CausalLMOutput

    model, x, y = _problem()
    opt = ZOSGD(model.parameters(), lr=1e-2, accum_steps=2)
    loss = opt.step(lambda i: CausalLMOutput(loss=torch.nn.functional.mse_loss(model(x[i::2]), y[i::2])))
    assert torch.isfinite(loss) and opt.zo_state["forwards"] == 4


def _without_transformers(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where ``import transformers`` fails as if it were not installed."""
    prelude = "import sys; sys.modules['transformers'] = None\n"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env,
                          timeout=120)


def test_missing_transformers_names_the_extra():
    done = _without_transformers("from forwardonly.hf import ZOTrainer")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last == ("forwardonly.errors.MissingExtra: forwardonly.hf needs transformers: "
                    "pip install 'forwardonly[lm]'")


def test_missing_transformers_on_the_command_line_is_one_line(tmp_path):
    code = (f"from forwardonly.cli.main import main; sys.exit(main(['eval', 'model.name={tmp_path}/m', "
            f"'task.name=sentiment']))")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    done = _without_transformers(code)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == \
        "forwardonly eval: error: loading a language model needs transformers: pip install 'forwardonly[lm]'"
