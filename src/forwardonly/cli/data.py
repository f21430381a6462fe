"""``forwardonly data``: fetch full datasets, list the built-in tasks."""

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
    return 0


def _fetch(args) -> int:
    from ..errors import UserError
    from ..tasks import bigbench

    if args.source != "bigbench":
        raise UserError(f"unknown data source {args.source!r}; available: bigbench")
    sizes = bigbench.extract(args.sdist, args.out, log=logging.getLogger("forwardonly").info)
    out = args.out or bigbench.data_dir()
    print(out)
    logging.getLogger("forwardonly").info("use them as: " + ", ".join(f"task=bigbench/{n}" for n in sizes))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="fetch full task data; list built-in tasks",
                              description="Built-in tasks ship as small subsets; fetch the full data here.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    ls = sub.add_parser("list", help="built-in tasks, their shipped sizes, and whether the full data is fetched")
    ls.set_defaults(func=_list)
    fe = sub.add_parser("fetch", help="extract full tasks (bigbench: from the bigbench 1.0.0 sdist, "
                                      "downloaded with --no-deps and never installed)")
    fe.add_argument("source", help="data source: bigbench")
    fe.add_argument("--sdist", help="a local bigbench-1.0.0.tar.gz instead of downloading it")
    fe.add_argument("--out", help="output directory (default: <cache>/data/bigbench)")
    fe.set_defaults(func=_fetch)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])
