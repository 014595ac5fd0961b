"""Train a skin-lesion classifier: `accelerate launch train.py --data PATH --model NAME ...` or `python train.py ...`."""

from __future__ import annotations

import json
import shlex
import sys

from skinlesion.training.config import build_parser, config_from_args


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if args.tune:
        from skinlesion.training.tuning import tune

        print(json.dumps(tune(cfg, trials=args.tune, epochs=args.tune_epochs), indent=2))
        return 0
    from skinlesion.training.loop import train

    summary = train(cfg, command=shlex.join(["python", "train.py", *(sys.argv[1:] if argv is None else argv)]))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
