"""``forwardonly report``: Markdown tables and PNG plots from result JSON, without re-running anything.

Examples::

    forwardonly report benchmarks/zo_bench/results
    forwardonly report benchmarks/local_learning/results out_dir=/tmp/ll --no-plots
    forwardonly report benchmarks/zo_bench/results --strict      # a corrupt JSON file is an error

Writes ``report.md`` (and the PNGs it links) into ``out_dir`` (default: the
results directory) and prints the Markdown. What each file holds is read from
its content: training runs, memory sweeps, local-learning results.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

MARK_BEGIN, MARK_END = "<!-- report -->", "<!-- /report -->"


class Report:
    """Render every result record under a directory."""

    help = "Markdown tables and PNG plots from benchmark result JSON (never re-runs anything)"

    @staticmethod
    def add_arguments(p):
        p.add_argument("results_dir", metavar="RESULTS_DIR", help="directory of result *.json (searched recursively)")
        from .common import add_out_dir

        add_out_dir(p, "where report.md and the plots go (default: RESULTS_DIR)")
        p.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
        p.add_argument("--strict", action="store_true", help="fail on a file that is not valid JSON")
        p.add_argument("--readme", metavar="FILE",
                       help=f"also replace the block between {MARK_BEGIN} and {MARK_END} in FILE with the report")

    @staticmethod
    def run(args) -> int:
        from ..bench.report import load_results, render_markdown
        from ..io import atomic_write_text

        loaded = load_results(args.results_dir, strict=args.strict)
        for path, why in loaded.bad:
            logging.getLogger("forwardonly").warning(f"forwardonly report: skipped {path}: {why}")
        out = Path(args.out or args.results_dir)
        out.mkdir(parents=True, exist_ok=True)
        plots = []
        if not args.no_plots:
            from ..bench.plots import all_plots

            plots = all_plots(loaded, out)
        text = render_markdown(loaded, plots)
        atomic_write_text(out / "report.md", text)
        if args.readme:
            readme = Path(args.readme)
            prefix = os.path.relpath(out, readme.resolve().parent).replace(os.sep, "/") + "/"
            atomic_write_text(readme, splice(readme, render_markdown(loaded, plots, "" if prefix == "./" else prefix)))
        print(text)
        return 0


def splice(readme: Path, block: str) -> str:
    """``readme``'s text with the block between the report markers replaced by ``block``."""
    from ..errors import UserError

    text = readme.read_text() if readme.is_file() else ""
    begin, end = text.find(MARK_BEGIN), text.find(MARK_END)
    if begin < 0 or end < begin:
        raise UserError(f"{readme}: no {MARK_BEGIN} ... {MARK_END} block to replace")
    return text[: begin + len(MARK_BEGIN)] + "\n" + block + text[end:]


def register(subparsers) -> None:
    import argparse

    p = subparsers.add_parser("report", help=Report.help, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    Report.add_arguments(p)
    p.set_defaults(func=Report.run)
