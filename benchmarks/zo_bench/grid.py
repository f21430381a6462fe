"""Write the experiment folders of the ZO-Bench grid (run once; the folders are committed).

    python benchmarks/zo_bench/grid.py            # (re)writes experiments/*/overrides.yaml

The grid of issue 4: optimizers x schemes x tasks, plus zero-shot references
(``steps: 0``) per scheme x task, plus the ZO-Bench enhancements (block-wise
ZO, sparse perturbations, hybrid ZO/FO: ``zo-sgd-block``, ``zo-sgd-sparse``,
``zo-sgd-hybrid``), full-parameter, on every task. Learning rates are NOT tuned
here: they are the orders of magnitude of MeZO's (Malladi et al. 2023, appendix D) and ZO-Bench's
(Zhang et al. 2024) grids for each scheme, the same for every task.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = {"sentiment": "sentiment", "mc": "social_iqa", "yesno": "strategyqa", "qa": "disfl_qa"}
SCHEMES = ("full", "lora", "prefix", "prompt")
ZO = ("zo-sgd", "zo-sgd-mmt", "zo-sgd-cons", "zo-sgd-sign", "zo-adam", "forward-grad")
FO = ("fo-sgd", "fo-adam")
# (optimizer family, scheme) -> lr; ZO eps per scheme (MeZO: 1e-3 full, 1e-2 LoRA, 1e-1 prefix)
LR = {
    ("zo", "full"): 1e-6, ("zo", "lora"): 1e-4, ("zo", "prefix"): 1e-2, ("zo", "prompt"): 1e-2,
    ("zo-adam", "full"): 1e-5, ("zo-adam", "lora"): 1e-3, ("zo-adam", "prefix"): 1e-2, ("zo-adam", "prompt"): 1e-2,
    ("fo-sgd", "full"): 1e-3, ("fo-sgd", "lora"): 1e-2, ("fo-sgd", "prefix"): 1e-2, ("fo-sgd", "prompt"): 1e-2,
    ("fo-adam", "full"): 1e-5, ("fo-adam", "lora"): 1e-4, ("fo-adam", "prefix"): 1e-3, ("fo-adam", "prompt"): 1e-3,
}
# Per-task sizes on top of defaults.yaml, so that no task dominates the default grid's time: multiple choice
# scores 3 options per example (batch 2 = 6 sequences); QA prompts are paragraphs (median 188 tokens: at 64
# tokens the answer is mostly cut away), so QA keeps 192 tokens with batch 2 and 32 test questions.
TASK_EXTRA = {"mc": ("", "batch_size: 2\n"), "qa": (", max_length: 192, max_test: 32", "batch_size: 2\n")}
EPS = {"full": 1e-3, "lora": 1e-2, "prefix": 1e-1, "prompt": 1e-1}
# ZO-Bench's enhancements (sec. 5), full-parameter only: folder suffix -> optimizer and its own options.
# Block-wise: blocks from the parameter names (embeddings, each of the 30 layers, final norm = 32 for
# SmolLM2), one per step. Sparse: 20 % of every tensor per step. Hybrid: the last layer and the final
# norm first-order (AdamW at FO-Adam's full-parameter lr), ZO-SGD below; hybrid-fo-only is its ablation
# (ZO lr 0: the same forwards and steps, only the first-order top moves).
ENHANCED = {
    "blockwise": ("zo-sgd-block", ""),
    "sparse": ("zo-sgd-sparse", ", density: 0.2"),
    "hybrid": ("zo-sgd-hybrid", f", fo_blocks: 2, fo_optim: adam, fo_lr: {LR[('fo-adam', 'full')]:g}"),
    "hybrid-fo-only": ("zo-sgd-hybrid", f", fo_blocks: 2, fo_optim: adam, fo_lr: {LR[('fo-adam', 'full')]:g}"),
}


def family(opt: str) -> str:
    return opt if opt in ("zo-adam", "fo-sgd", "fo-adam") else "zo"


def overrides(task: str, scheme: str, opt: str | None) -> str:
    short = next(k for k, v in TASKS.items() if v == task)
    task_keys, extra = TASK_EXTRA.get(short, ("", ""))
    lines = [f"scheme: {{name: {scheme}}}", f"task: {{name: {task}{task_keys}}}"] + ([extra.strip()] if extra else [])
    if opt is None:
        lines.append("steps: 0  # zero-shot reference: evaluate the untrained model once")
    elif opt in FO:
        lines.append(f"optim: {{name: {opt}, lr: {LR[(opt, scheme)]:g}}}")
    else:
        lines.append(f"optim: {{name: {opt}, lr: {LR[(family(opt), scheme)]:g}, eps: {EPS[scheme]:g}}}")
    return "\n".join(lines) + "\n"


def write(root: Path = HERE / "experiments") -> int:
    n = 0
    for short, task in TASKS.items():
        for scheme in SCHEMES:
            for opt in (*ZO, *FO, None):
                name = f"{short}-{scheme}-{opt or 'zeroshot'}"
                d = root / name
                d.mkdir(parents=True, exist_ok=True)
                cmd = f"# PYTHONPATH=src python benchmarks/zo_bench/run.py --only {name}\n"
                (d / "overrides.yaml").write_text(cmd + overrides(task, scheme, opt))
                n += 1
    for short, task in TASKS.items():
        for kind, (opt, extra) in ENHANCED.items():
            name = f"{short}-full-{kind}"
            d = root / name
            d.mkdir(parents=True, exist_ok=True)
            (d / "NOT_IMPLEMENTED.md").unlink(missing_ok=True)
            (d / "overrides.yaml").write_text(
                f"# PYTHONPATH=src python benchmarks/zo_bench/run.py --only {name}\n"
                f"scheme: {{name: full}}\ntask: {{name: {task}{TASK_EXTRA.get(short, ('', ''))[0]}}}\n"
                f"{TASK_EXTRA.get(short, ('', ''))[1]}"
                f"optim: {{name: {opt}, lr: {0 if kind.endswith('fo-only') else LR[('zo', 'full')]:g}, "
                f"eps: {EPS['full']:g}{extra}}}\n")
            n += 1
    return n


if __name__ == "__main__":
    print(f"wrote {write()} experiment folders")
