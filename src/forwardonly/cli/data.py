"""``forwardonly data``: list the built-in tasks; extract the full BIG-bench tasks from a source you have.

The built-in tasks ship as small subsets of four BIG-bench tasks. The full tasks are no longer
on the package index (it serves only ``bigbench`` 0.0.1, which has no task data), so ``fetch`` reads
them from a BIG-bench checkout, a tarball of it, or a ``bigbench-1.0.0.tar.gz`` you kept::

    forwardonly data list
    forwardonly data fetch bigbench --from BIG-bench        # after: git clone https://github.com/google/BIG-bench
    forwardonly train --config lm/sentiment-smollm2-zo-lora task=bigbench/sentiment

Any other data is your own files: ``task.data.train=FILE task.data.test=FILE`` with
``task.kind`` and ``task.template.*`` (see ``forwardonly train --help``).
"""

from __future__ import annotations

import logging


def _list(args) -> int:
    from ..tasks import get_task
    from ..tasks.bigbench import TASKS, data_dir

    for name in sorted(TASKS):
        task = get_task(name)
        sizes = ", ".join(f"{s} {len(v)}" for s, v in task.splits.items())
        full = "yes" if (data_dir() / f"{name}.yaml").is_file() else "no"
        print(f"{name:<12} {task.kind:<16} shipped: {sizes:<36} full (bigbench/{name}): {full}")
    logging.getLogger("forwardonly").info("\nfull tasks: forwardonly data fetch bigbench --from PATH (a BIG-bench "
                                          "checkout or tarball); your own data: task.data.train=FILE")
    return 0


def _fetch(args) -> int:
    from ..errors import UserError
    from ..tasks import bigbench

    if args.source != "bigbench":
        raise UserError(f"unknown data source {args.source!r}; available: bigbench")
    sizes = bigbench.extract(args.source_path, args.out, log=logging.getLogger("forwardonly").info)
    out = args.out or bigbench.data_dir()
    print(out)
    logging.getLogger("forwardonly").info("use them as: " + ", ".join(f"task=bigbench/{n}" for n in sizes))
    return 0


def register(subparsers) -> None:
    from .common import action_parser, add_out_dir

    _, sub = action_parser(subparsers, "data", "list built-in tasks; extract full BIG-bench tasks from a local source",
                           __doc__)
    ls = sub.add_parser("list", help="built-in tasks, their shipped sizes, and whether the full data is fetched")
    ls.set_defaults(func=_list)
    fe = sub.add_parser("fetch", help="extract the full BIG-bench tasks from a checkout or tarball you have "
                                      "(nothing is downloaded)")
    fe.add_argument("source", help="data source: bigbench")
    fe.add_argument("--from", "--sdist", dest="source_path", metavar="PATH",
                    help="a BIG-bench checkout (git clone https://github.com/google/BIG-bench), a tarball of it, "
                         "or a bigbench-1.0.0.tar.gz")
    add_out_dir(fe, "output directory (default: <cache>/data/bigbench)")
    fe.set_defaults(func=_fetch)
