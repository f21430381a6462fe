"""Conventions shared by the subcommands: shipped configs by name, ``key=value`` anywhere, aliases.

* ``--config`` takes a file or the name of a shipped config (``forwardonly configs list``);
* ``key=value`` overrides may stand before, between or after the flags;
* Hugging Face ``Trainer``-style flags (``--learning_rate 1e-4``) are read as the config key they
  mean, with a one-line note; any other flag that names a config key gets a one-line hint;
* the output directory is spelled ``out_dir=DIR`` by every subcommand (``--out DIR`` still works,
  with a deprecation line).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")

# Hugging Face Trainer / PEFT / common script flags -> the forwardonly config key they mean.
LM_ALIASES = {
    "model_name_or_path": "model.name", "model": "model.name", "output_dir": "out_dir",
    "learning_rate": "optim.lr", "lr": "optim.lr", "max_steps": "steps", "seed": "seed",
    "per_device_train_batch_size": "batch_size", "train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size", "gradient_accumulation_steps": "accum_steps",
    "warmup_steps": "optim.warmup_steps", "lr_scheduler_type": "optim.schedule", "weight_decay": "optim.weight_decay",
    "max_grad_norm": "optim.clip", "logging_steps": "log_every", "eval_steps": "eval_every",
    "save_steps": "save_every", "dataset_name": "task.name", "task_name": "task.name", "task": "task.name",
    "max_seq_length": "task.max_length", "max_length": "task.max_length", "lora_r": "scheme.r",
    "lora_alpha": "scheme.alpha", "lora_dropout": "scheme.dropout", "torch_dtype": "model.dtype",
    "dtype": "model.dtype", "device": "device",
}
LOCAL_ALIASES = {
    "output_dir": "out_dir", "learning_rate": "lr", "num_train_epochs": "epochs", "seed": "seed",
    "per_device_train_batch_size": "batch_size",
}
HINTS = {
    "num_train_epochs": "forwardonly train counts optimizer steps, not epochs: use steps=N (each step sees "
                        "batch_size*accum_steps examples)",
    "do_train": "forwardonly train always trains; skip evaluation with validate=false test=false",
    "do_eval": "evaluation is on by default: validate=true (task.eval_split) and test=true (task.test_split)",
    "bf16": "use model.dtype=bfloat16", "fp16": "use model.dtype=float16",
    "report_to": "tracking backends are not part of this command's options",
}
ALIASES = {"train": LM_ALIASES, "eval": LM_ALIASES, "demo": LM_ALIASES, "local": LOCAL_ALIASES}


def shipped_configs() -> dict[str, Path]:
    """``{name: path}`` of the configs shipped in the package (``lm/NAME``, ``local/NAME``, ``demo``)."""
    return {str(p.relative_to(CONFIG_DIR).with_suffix("")): p for p in sorted(CONFIG_DIR.rglob("*.yaml"))}


def find_shipped(name: str) -> Path | None:
    """The shipped config called ``name`` (``lm/NAME``, or ``NAME`` alone where it is unique), or None."""
    name = name.removesuffix(".yaml").removeprefix("configs/")
    matches = [p for n, p in shipped_configs().items() if n == name or n.split("/", 1)[-1] == name]
    return matches[0] if len(matches) == 1 else None


def resolve_config(spec: str | None) -> Path | None:
    """A ``--config`` value as a path: an existing file, else a shipped config's name."""
    if spec is None:
        return None
    path = Path(spec).expanduser()
    if path.exists():
        return path
    shipped = find_shipped(spec)
    if shipped is None:
        raise UserError(f"config file not found: {spec} (nor a shipped config; see: forwardonly configs list)")
    return shipped


def translate_aliases(argv: list[str]) -> tuple[list[str], list[str]]:
    """Rewrite ``--learning_rate 1e-4`` (or ``--learning_rate=1e-4``) to ``optim.lr=1e-4``; returns notes."""
    command = next((a for a in argv if not a.startswith("-")), None)
    table = ALIASES.get(command, {})
    out, notes, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg[2:].partition("=")
        key = table.get(name.replace("-", "_")) if arg.startswith("--") else None
        if key is None:
            out.append(arg)
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                raise UserError(f"{arg} needs a value ({key}=VALUE)")
            value, i = argv[i + 1], i + 1
        out.append(f"{key}={value}")
        notes.append(f"forwardonly {command}: note: {arg.split('=')[0]} read as {key}={value}")
        i += 1
    return out, notes


def unknown_arguments(command: str, extras: list[str], config_cls=None) -> str:
    """The one-line error for arguments no parser took, with the config key to use where there is one."""
    flag = next((x for x in extras if x.startswith("-")), None)
    if flag is not None:
        name = flag.lstrip("-").split("=")[0].replace("-", "_")
        if name in HINTS:
            return f"unrecognized argument {flag}: {HINTS[name]}"
        key = _config_key(config_cls, name)
        if key is not None:
            return f"unrecognized argument {flag}: config keys are set as key=value, e.g. {key}=..."
    return f"unrecognized arguments: {' '.join(extras)} (see: forwardonly {command} --help)"


def _config_key(cls, name: str) -> str | None:
    import dataclasses
    import typing

    if cls is None:
        return None
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        keys.append(f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(hints[f.name])]
    name = name.replace("__", ".")
    return next((k for k in keys if k == name or k.endswith("." + name)), None)


class DeprecatedOut(argparse.Action):
    """``--out DIR``: kept as an alias of ``out_dir=DIR``, with a deprecation line."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: note: {option_string} is deprecated; use out_dir={values}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_out_dir(p, help_text: str) -> None:
    """The output directory: ``out_dir=DIR`` (taken from the overrides by :func:`take_out_dir`), or ``--out``."""
    p.add_argument("--out", dest="out", action=DeprecatedOut, metavar="DIR",
                   help=f"out_dir=DIR: {help_text}; --out DIR is its deprecated spelling")


def add_config_arguments(p, config: str | None, overrides: str, progress: str = "no progress bar") -> None:
    """The arguments of every config-driven subcommand: ``--config`` (a ``config`` YAML file or a shipped
    config's name; none when ``config`` is None), ``--print-config``, ``--no-progress`` and the ``key=value``
    overrides (``overrides``: their help). A subcommand calls this first, then adds its own flags."""
    if config is not None:
        p.add_argument("--config", help=f"YAML config (a {config}) or a shipped config's name (forwardonly configs list)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--no-progress", action="store_true", help=progress)
    p.add_argument("overrides", nargs="*", metavar="key=value", help=overrides)


def take_out_dir(args, extras: list[str]) -> list[str]:
    """Move ``out_dir=DIR`` from ``extras`` into ``args.out`` (subcommands without config overrides)."""
    rest = []
    for x in extras:
        if x.startswith("out_dir="):
            args.out = x.split("=", 1)[1]
        else:
            rest.append(x)
    return rest


def add_command(subparsers, name: str, command, doc: str, config_cls=None):
    """A subcommand that is one class (``forwardonly NAME``): its parser, with ``command.help``, ``doc`` as the
    description and ``command.add_arguments``, running ``command.run``. ``config_cls`` returns the config
    class whose keys the hints for unknown flags name (:func:`unknown_arguments`)."""
    p = subparsers.add_parser(name, help=command.help, description=doc,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_arguments(p)
    p.set_defaults(func=command.run)
    if config_cls is not None:
        p.set_defaults(config_cls=config_cls)
    return p


def action_parser(subparsers, name: str, help_text: str, doc: str):
    """A subcommand made of actions (``forwardonly NAME ACTION``): its parser and its actions' subparsers.
    Without an action it prints its help and exits 1."""
    p = subparsers.add_parser(name, help=help_text, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])
    return p, p.add_subparsers(dest=f"{name}_command", metavar="ACTION")


def print_config(cfg) -> int:
    """``--print-config``: the resolved config as YAML on stdout."""
    from ..config import dump_yaml

    sys.stdout.write(dump_yaml(cfg))
    return 0
