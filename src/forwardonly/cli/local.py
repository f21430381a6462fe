"""``forwardonly local``: train and evaluate forward-only learners.

Examples::

    forwardonly local train --algo mf --data fashion-mnist out_dir=runs/mf epochs=20
    forwardonly local train --config local/ff-fashion-mnist out_dir=runs/ff --resume
    forwardonly local train --config local/mf-digits --print-config
    forwardonly local eval runs/mf
    forwardonly local graph --algo sf --data cora --data-dir DIR layer=sage
    forwardonly local graph task=link algo=ff data=cora data_dir=DIR
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..config import load_config
from ..errors import UserError
from .common import add_config_arguments, add_out_dir, print_config, resolve_config


def _add_source_flags(p, algos: str, data: str, data_dir: str) -> None:
    """``--algo``, ``--data`` and ``--data-dir``, short for the config keys ``algo=``, ``data=`` and ``data_dir=``
    (read back by :func:`_flags`); the arguments say what each takes."""
    p.add_argument("--algo", help=f"{algos} (same as algo=...)")
    p.add_argument("--data", help=f"{data} (same as data=...)")
    p.add_argument("--data-dir", help=f"{data_dir} (same as data_dir=...)")


def _flags(args, **more) -> list[str]:
    """``key=value`` overrides from the ``--algo/--data/--data-dir`` options (and ``more``: config key -> option)."""
    names = {"algo": "algo", "data": "data", "data_dir": "data_dir", **more}
    return [f"{key}={getattr(args, opt)}" for key, opt in names.items() if getattr(args, opt)]


def _print_summary(summary: dict) -> int:
    """A finished run's summary as JSON on stdout, without the model and the per-epoch history."""
    summary.pop("model")
    summary.pop("history")
    print(json.dumps(summary, indent=2))
    return 0


class Train:
    """Train one method; config from ``--config`` YAML, then ``--algo/--data/--data-dir``, then ``key=value``."""

    help = "train a forward-only learner (or the backprop baseline) on an image data set"

    @staticmethod
    def add_arguments(p):
        add_config_arguments(p, "LocalConfig", "config overrides, anywhere on the line, e.g. out_dir=runs/a lr=3e-4 "
                                               "ff.loss=hinton")
        _add_source_flags(p, "ff, mf, cafo, dfa, drtp, fg, bp, tpsgd or noprop",
                          "fashion-mnist, mnist, digits, cifar10 or cifar100", "directory with the raw data files")
        add_out_dir(p, "output directory for checkpoint/metrics")
        p.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint")

    @staticmethod
    def run(args) -> int:
        from ..local.config import LocalConfig
        from ..local.trainer import train
        from .main import show_progress

        cfg = load_config(LocalConfig, resolve_config(args.config), [*_flags(args, out_dir="out"), *args.overrides])
        if args.print_config:
            return print_config(cfg)
        if args.resume and not cfg.out_dir:
            raise UserError("--resume needs an output directory (out_dir=DIR)")
        return _print_summary(train(cfg, progress=show_progress(args), resume=args.resume,
                                    log=logging.getLogger("forwardonly").info))


class Eval:
    """Score a trained run's best weights on the test set."""

    help = "evaluate the best weights of a finished or interrupted run"

    @staticmethod
    def add_arguments(p):
        p.add_argument("run_dir", help="the run's out_dir (holding checkpoint/)")
        p.add_argument("--data-dir", help="directory with the raw data files")

    @staticmethod
    def run(args) -> int:
        from ..io import load_safetensors, load_torch
        from ..local import build_model
        from ..local.config import LocalConfig
        from ..local.data import load_dataset

        ckpt = Path(args.run_dir) / "checkpoint"
        if not (ckpt / "state.pt").is_file():
            raise UserError(f"no checkpoint in {ckpt}")
        state = load_torch(ckpt / "state.pt", "checkpoint state")
        try:
            saved = json.loads(state["config"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{ckpt / 'state.pt'}: not a forwardonly local checkpoint (no config)") from None
        if args.data_dir:
            saved["data_dir"] = args.data_dir
        cfg = load_config(LocalConfig, None, None, base=saved)
        data = load_dataset(cfg.data, cfg.data_dir, cfg.val_fraction, cfg.limit_train)
        model = build_model(cfg, data.n_features, data.n_classes, data.shape)
        try:
            model.load_state_dict(load_safetensors(ckpt / "best.safetensors", "checkpoint weights"))
        except RuntimeError as e:
            raise UserError(f"{ckpt / 'best.safetensors'}: does not fit the model ({str(e).splitlines()[0]})") from None
        print(json.dumps({"algo": cfg.algo, "data": cfg.data,
                          **{f"test_{k}": v for k, v in model.evaluate(data.x_test, data.y_test).items()}}))
        return 0


class GraphTrain:
    """Node classification or link prediction (``task=link``) on a citation graph: ForwardGNN (``ff``, ``sf``)
    or the backprop twin (``bp``)."""

    help = "train a GCN/GraphSAGE forward-only (ForwardGNN) or by backprop on a citation graph"

    @staticmethod
    def add_arguments(p):
        p.add_argument("--config", help="YAML config (a GraphConfig); keys may be overridden after it")
        _add_source_flags(p, "ff, sf or bp", "cora, citeseer, pubmed or csbm",
                          "directory with <name>.content and <name>.cites")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, e.g. layer=sage top_down=true, or task=link val_edges=0.05")

    @staticmethod
    def run(args) -> int:
        from ..local.graph import GraphConfig, train_graph

        cfg = load_config(GraphConfig, args.config, [*_flags(args), *args.overrides])
        return _print_summary(train_graph(cfg))


COMMANDS = {"train": Train, "eval": Eval, "graph": GraphTrain}


def _local_config_cls():
    from ..local.config import LocalConfig

    return LocalConfig


def register(subparsers) -> None:
    import argparse

    parser = subparsers.add_parser("local", help="forward-only learning: FF, MF, CaFo, DFA, DRTP, tpSGD, NoProp, "
                                   "forward gradient, ForwardGNN",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="local_command", metavar="{train,eval,graph}")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.__doc__)
        cmd.add_arguments(p)
        p.set_defaults(func=cmd.run, subcommand=name, config_cls=_local_config_cls)
    parser.set_defaults(func=lambda args: parser.print_help() or 1)
