"""Command line: ``jaxpurify demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxpurify", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="encode, contaminate and purify the paper's CNN on the embedded digits")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--filters", type=int, default=256, help="hidden filters K (default 256)")
    d.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from jaxpurify import demo

        if args.filters < 8 or args.steps < 0:
            parser.error("--filters must be ≥ 8 and --steps ≥ 0")
        return demo.run(seed=args.seed, filters=args.filters, steps=args.steps)
    return 2


if __name__ == "__main__":
    sys.exit(main())
