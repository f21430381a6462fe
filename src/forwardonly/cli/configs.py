"""``forwardonly configs``: the configs shipped in the package, listed or copied out to edit.

Examples::

    forwardonly configs list
    forwardonly configs cp lm/sentiment-smollm2-zo-lora my-run.yaml
    forwardonly train --config my-run.yaml

Every shipped config begins with the command that runs it; ``--config NAME`` runs a shipped
config without copying it.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _first_comment(path: Path, line: int) -> str:
    lines = [x[1:].strip() for x in path.read_text().splitlines() if x.startswith("#")]
    return lines[line] if len(lines) > line else ""


def _list(args) -> int:
    from .common import shipped_configs

    for name, path in shipped_configs().items():
        print(f"{name:<40} {_first_comment(path, 1)[:80]}")
    return 0


def _cp(args) -> int:
    from ..errors import UserError
    from ..io import atomic_write_text
    from .common import find_shipped, shipped_configs

    src = find_shipped(args.name)
    if src is None:
        raise UserError(f"no shipped config {args.name!r}; shipped: {', '.join(shipped_configs())}")
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists() and not args.force:
        raise UserError(f"{dest} exists; pass --force to overwrite it")
    atomic_write_text(dest, src.read_text())
    print(dest)
    command = "local train" if src.parent.name == "local" else "train"
    print(f"run it: forwardonly {command} --config {dest}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    from .common import action_parser

    _, sub = action_parser(subparsers, "configs", "list the shipped configs, or copy one out to edit", __doc__)
    ls = sub.add_parser("list", help="the shipped configs by name, with what each runs")
    ls.set_defaults(func=_list)
    cp = sub.add_parser("cp", help="copy a shipped config to DEST (a file or a directory)")
    cp.add_argument("name", metavar="NAME", help="a name from `forwardonly configs list`")
    cp.add_argument("dest", metavar="DEST", help="destination file or directory")
    cp.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    cp.set_defaults(func=_cp)
