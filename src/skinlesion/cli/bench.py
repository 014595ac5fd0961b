"""`python -m skinlesion.bench {train,inference,app} ...`: speed as ratios measured in one run.

Each subcommand prints JSON; see the README for the tables and the machine they were measured on.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {"train": "skinlesion.bench.train", "inference": "skinlesion.bench.inference",
               "app": "skinlesion.bench.app"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        print(f"usage: python -m skinlesion.bench {{{','.join(SUBCOMMANDS)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
