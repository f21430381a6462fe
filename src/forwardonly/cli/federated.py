"""``forwardonly federated``: federated ZO fine-tuning in which clients send seeds and scalars only.

The config is a training config (``forwardonly train``'s) with a ``federated`` section; ``steps`` are
each client's local steps. Examples::

    forwardonly federated --config lm/sentiment-smollm2-zo-norm federated.clients=8 federated.alpha=0.5
    forwardonly federated --config lm/sentiment-smollm2-zo-norm federated.engine=flower   # Flower + Ray
    forwardonly federated --config run.yaml federated.clients=1 federated.alpha=none   # = forwardonly train

It prints a JSON summary: accuracy before and after, the forwards all clients spent, and
``bytes_per_client_round``, the most any client sent in a round (its packed steps:
:mod:`forwardonly.federated.wire`). With ``out_dir=DIR`` the summary and the resolved config are also
written there (``summary.json``, ``config.json``, atomically); a directory that already holds a summary
is refused.
"""

from __future__ import annotations

import json


class Federated:
    """Run a federated ZO training as a YAML config says, with ``key=value`` overrides."""

    help = "federated zeroth-order fine-tuning (clients exchange seeds and projected gradients)"

    @staticmethod
    def add_arguments(p):
        p.add_argument("--config", help="YAML config (a TrainConfig) or a shipped config's name")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, e.g. federated.clients=8 federated.alpha=0.5 steps=40")

    @staticmethod
    def run(args) -> int:
        from pathlib import Path

        from ..errors import UserError
        from ..federated.config import FederatedConfig
        from ..federated.run import run_federated
        from ..io import atomic_write_text
        from .train import load_train_config

        cfg = load_train_config(args.config, args.overrides)
        if cfg.federated is None:
            import dataclasses

            cfg = dataclasses.replace(cfg, federated=FederatedConfig())
        out = Path(cfg.out_dir) if cfg.out_dir else None
        if out is not None and (out / "summary.json").exists():
            raise UserError(f"{out} already holds a federated run's summary.json; choose another out_dir")
        import logging

        summary = run_federated(cfg, log=logging.getLogger("forwardonly").info)
        text = json.dumps({k: v for k, v in summary.items() if k not in ("model", "tokenizer")}, indent=1)
        if out is not None:
            from ..config import to_dict

            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.json", json.dumps(to_dict(cfg), indent=1) + "\n")
            atomic_write_text(out / "summary.json", text + "\n")
        print(text)
        return 0


def register(subparsers) -> None:
    from .common import add_command
    from .train import train_config_cls

    add_command(subparsers, "federated", Federated, __doc__, config_cls=train_config_cls)
