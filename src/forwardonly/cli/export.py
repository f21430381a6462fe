"""``forwardonly export``: a run's trained model as a standard Hugging Face / PEFT directory.

Examples::

    forwardonly export --run runs/a out_dir=exported/a            # LoRA run: the PEFT adapter directory
    forwardonly export --run runs/a --merge out_dir=exported/a    # adapters folded into the base weights

The output loads with ``PeftModel.from_pretrained(base, DIR)`` (adapters) or
``AutoModelForCausalLM.from_pretrained(DIR)`` (``--merge``, or full/head/bitfit runs;
``AutoModelForSequenceClassification`` for classifier runs). Nothing is overwritten.
"""

from __future__ import annotations


class Export:
    help = "write a run's trained model with save_pretrained (PEFT adapter, or merged/full model)"

    @staticmethod
    def add_arguments(p):
        p.add_argument("--run", required=True, metavar="DIR",
                       help="the run's out_dir (config.json, checkpoint/)")
        from .common import add_out_dir

        add_out_dir(p, "a new directory to write (required)")
        p.add_argument("--merge", action="store_true", help="fold LoRA adapters into the base weights")

    @staticmethod
    def run(args) -> int:
        import logging

        from ..errors import UserError
        from ..lm.export import export_run

        if not args.out:
            raise UserError("export: name the directory to write: out_dir=DIR")
        out = export_run(args.run, args.out, merge=args.merge)
        logging.getLogger("forwardonly.export").info("wrote %s", out)
        print(out)
        return 0


def register(subparsers) -> None:
    from .common import add_command

    add_command(subparsers, "export", Export, __doc__)
