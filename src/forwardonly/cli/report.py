"""``forwardonly report``: Markdown tables and PNG plots from result records, without re-running anything.

Examples::

    forwardonly report benchmarks/zo_bench/results
    forwardonly report runs/sentiment-zo-lora                   # one `forwardonly train` output directory
    forwardonly report benchmarks/zo_bench/results out_dir=/tmp/zo --no-plots
    forwardonly report benchmarks/zo_bench/results --strict      # a corrupt JSON file is an error

Writes ``report.md`` (and the PNGs it links) into ``out_dir`` (default: the
results directory) and prints the Markdown. What each file holds is read from
its content: training runs are tabled by task x scheme x optimizer, every other
record by its numeric results; figures are medians over records with their
spread. A run directory (``metrics.jsonl`` beside ``config.json`` or
``summary.json``) is one run: its metrics and its curves.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

BLOCK = "report"  # the generated block --readme replaces


class Report:
    """Render every result record under a directory."""

    help = "Markdown tables and PNG plots from benchmark result JSON (never re-runs anything)"

    @staticmethod
    def add_arguments(p):
        p.add_argument("results_dir", metavar="PATH",
                       help="directory of result *.json (searched recursively), or one run's output directory")
        from .common import add_out_dir

        add_out_dir(p, "where report.md and the plots go (default: PATH)")
        p.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
        p.add_argument("--strict", action="store_true", help="fail on a file that is not valid JSON")
        p.add_argument("--readme", metavar="FILE",
                       help="also replace the generated block 'report' in FILE (<!-- generated:report --> ... "
                            "<!-- /generated:report -->) with the report")

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
    """``readme``'s text with its generated ``report`` block replaced by ``block``."""
    from ..bench.blocks import replace_block

    text = readme.read_text() if readme.is_file() else ""
    return replace_block(text, BLOCK, block, where=str(readme))


def register(subparsers) -> None:
    from .common import add_command

    add_command(subparsers, "report", Report, __doc__)
