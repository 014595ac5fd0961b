"""`skinlesion publish space|model`: deploy the app as a Hugging Face Space, or push a model folder.

Every command checks first, in seconds and without uploading anything, that a push can succeed (repo
id form, HF_HUB_OFFLINE, a token, the Hub reachable). A token comes from HF_TOKEN or `hf auth login`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import publish
from ..hub import HubUnavailableError
from .common import add_command, command_parser, report_error


def _space(args: argparse.Namespace) -> None:
    if args.model_id is not None:
        publish.parse_model_id(args.model_id)  # its form, before anything else (even a dry run)
    if args.dry_run:
        print(f"Space {args.repo_id} would receive, from {args.root}:")
        print(publish.format_listing(publish.space_files(args.root)))
        if args.model_id is not None:
            print(f"and the Space variable MODEL_ID={args.model_id}")
        return
    print(publish.deploy_space(args.repo_id, model_id=args.model_id, private=args.private, root=args.root))


def _model(args: argparse.Namespace) -> None:
    files = publish.model_files(args.folder)
    if args.dry_run:
        print(f"Model repo {args.repo_id} would receive, from {args.folder}:")
        print(publish.format_listing(files))
        return
    publish.check_can_push(args.repo_id, what=f"publish model {args.repo_id}")
    print(publish.push_folder(args.folder, args.repo_id, private=args.private, message=args.message))


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = command_parser(prog, __doc__.split("\n", 2)[2], [
        f"{prog} space OWNER/NAME --dry-run",
        f"{prog} space OWNER/NAME --model-id OWNER/MODEL@v1",
        f"{prog} model runs/r18 OWNER/MODEL"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{space,model}")

    space = add_command(
        commands, "space", "deploy the app as a Gradio Space",
        "Create or update a Gradio Space with app.py, requirements.txt, README.md (its front matter is the "
        "Space config), pyproject.toml, src/, weights/ and examples/; nothing else. Files an earlier deploy "
        "left there that are no longer in that list are deleted in the same commit.",
        [f"{prog} space me/skin-lesion-demo --dry-run", f"{prog} space me/skin-lesion-demo --model-id me/skinlesion-r18@v1"])
    space.add_argument("repo_id", metavar="OWNER/NAME", help="the Space")
    space.add_argument("--model-id", default=None, metavar="OWNER/MODEL[@REV]",
                       help="set the Space variable MODEL_ID: the app serves this Hub model (a revision pins it) "
                            "and falls back to weights/ when it cannot load it. Without it an existing MODEL_ID "
                            "is left unchanged")
    space.add_argument("--private", action=argparse.BooleanOptionalAction, default=False,
                       help="create the Space private (an existing Space keeps its visibility)")
    space.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=False,
                       help="print each file and its size, and the total; no network")
    space.add_argument("--root", type=Path, default=publish.REPO_ROOT, help="the repository to deploy (default: %(default)s)")
    space.set_defaults(publish=_space)

    model = add_command(
        commands, "model", "push a model folder to a Hub model repo (as train.py --push-to-hub does)",
        "Upload a model folder (weights, config, card, plots, manifest; never checkpoints) in one commit.",
        [f"{prog} model runs/r18 me/skinlesion-r18 --dry-run", f"{prog} model runs/r18 me/skinlesion-r18"])
    model.add_argument("folder", type=Path, metavar="FOLDER", help="model folder (config.json + model.safetensors)")
    model.add_argument("repo_id", metavar="OWNER/NAME", help="the model repo")
    model.add_argument("--private", action=argparse.BooleanOptionalAction, default=False,
                       help="create the repo private (an existing repo keeps its visibility)")
    model.add_argument("--message", default=None, help="commit message")
    model.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=False,
                       help="print each file and its size, and the total; no network")
    model.set_defaults(publish=_model)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        args.publish(args)
    except (publish.PublishError, HubUnavailableError, ValueError) as err:
        # Expected problems a user fixes (offline, no token, missing files, a bad id): the message, no traceback.
        return report_error(f"skinlesion publish {args.command}", err, 1)
    return 0
