"""The arguments of `fluxfill submit | watch | cancel | fetch | dlq`; what they do is in job_commands.

Kept free of the bridge and Google imports, so the other commands never load them.
"""

import argparse
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fluxfill.client.errors import EXIT_USAGE

# Each job setting, and the environment variable that gives its default.
SETTING_VARIABLES = {
    "project": "FLUXFILL_PROJECT",
    "bucket": "FLUXFILL_BUCKET",
    "topic": "FLUXFILL_TOPIC",
    "urgent_topic": "FLUXFILL_URGENT_TOPIC",
    "dead_letter_subscription": "FLUXFILL_DLQ_SUBSCRIPTION",
    "document": "FLUXFILL_CONFIG_DOCUMENT",
    "database": "FLUXFILL_FIRESTORE_DATABASE",
}
# = fluxfill.bridge.contract.DEFAULT_RUNTIME_CONFIG_DOCUMENT (not imported: this module stays light; tested).
DEFAULT_CONFIG_DOCUMENT = "fluxfillConfig/runtime"
# = fluxfill.bridge.contract.DEFAULT_FIRESTORE_DATABASE (likewise).
DEFAULT_DATABASE = "(default)"


def default_settings(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Flag defaults from the environment."""
    return {
        **{name: environ.get(variable, "") for name, variable in SETTING_VARIABLES.items()},
        "project": environ.get("FLUXFILL_PROJECT") or environ.get("GOOGLE_CLOUD_PROJECT", ""),
        "document": environ.get("FLUXFILL_CONFIG_DOCUMENT") or DEFAULT_CONFIG_DOCUMENT,
        "database": environ.get("FLUXFILL_FIRESTORE_DATABASE") or DEFAULT_DATABASE,
        "user": environ.get("FLUXFILL_USER", "fluxfill-cli"),
    }


def missing_setting(name: str) -> str:
    """The message for a setting neither flag nor variable gave."""
    return (
        f"no {name.replace('_', ' ')} given: pass --{name.replace('_', '-')} or set {SETTING_VARIABLES[name]}"
    )


def _common(parser: argparse.ArgumentParser, *names: str) -> None:
    defaults = default_settings()
    helps = {
        "project": "Google Cloud project (FLUXFILL_PROJECT or GOOGLE_CLOUD_PROJECT)",
        "bucket": "bucket of originals, masks and results (FLUXFILL_BUCKET)",
        "topic": "Pub/Sub topic id the app publishes jobs to (FLUXFILL_TOPIC)",
        "urgent_topic": "topic id of urgent jobs (FLUXFILL_URGENT_TOPIC); empty: --topic",
        "dead_letter_subscription": "subscription id of the dead-letter topic (FLUXFILL_DLQ_SUBSCRIPTION)",
        "document": "the runtime config document, as the bridge's FLUXFILL_BRIDGE_RUNTIME_CONFIG_DOCUMENT "
        "(FLUXFILL_CONFIG_DOCUMENT)",
        "user": "the user id the session belongs to (FLUXFILL_USER, default fluxfill-cli)",
        "database": "the app's Firestore database, as the bridge's FLUXFILL_BRIDGE_FIRESTORE_DATABASE "
        f"(FLUXFILL_FIRESTORE_DATABASE, default {DEFAULT_DATABASE})",
    }
    for name in ("project", "database", *names, "user"):
        parser.add_argument("--" + name.replace("_", "-"), default=defaults[name], help=helps[name])


def finite_number(text: str) -> float:
    """An argument's number, refused by argparse when it is not finite: `--interval nan` failed the watch
    with an unexpected error, and a timeout of nan never ran out."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_parsers(commands: "argparse._SubParsersAction[Any]") -> None:
    """Register submit, watch, cancel, fetch and dlq."""
    submit = commands.add_parser(
        "submit",
        help="upload photo and mask, create the session and publish the job, as the app does",
        description="Upload IMAGE and MASK, create the queued session document and publish the job "
        "exactly as the app does; prints the session id. Emulators are used when *_EMULATOR_HOST is set. "
        "MASK is read by this client's rules (an RGBA image repaints its transparent pixels) and uploaded "
        "white on black; the bridge reads an app's own RGBA mask by its opaque pixels. A photo the bridge "
        "would refuse for its size is refused before anything is uploaded, by the bridge's own "
        "FLUXFILL_BRIDGE_MAX_OBJECT_BYTES and FLUXFILL_BRIDGE_MAX_IMAGE_PIXELS (else the bridge's defaults). "
        "Objects and the session document go where the bridge's FLUXFILL_BRIDGE_*_TEMPLATE variables say "
        "(else the contract's paths), as every job command reads them.",
    )
    submit.add_argument("image", type=Path, help="the photo")
    submit.add_argument("mask", help="mask image (white = repaint), RGBA image (transparent), or box x,y,w,h")
    submit.add_argument("--prompt", default="", help="what to paint")
    submit.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    submit.add_argument("--guidance", type=finite_number, help="guidance scale (default: the model's)")
    submit.add_argument("--seed", type=int, help="seed (default: random)")
    submit.add_argument(
        "--priority",
        choices=("urgent", "bulk"),
        default="bulk",
        help="urgent jobs go to the urgent topic and are taken before bulk ones",
    )
    submit.add_argument("--session", help="session id to use (default: a new random id)")
    _common(submit, "bucket", "topic", "urgent_topic")

    watch = commands.add_parser(
        "watch",
        help="show a session's status and progress until it ends",
        description="Show SESSION's status and progress until it is done, failed or cancelled. Exit codes: "
        "0 done, 2 failed for its input, 3 failed for the service, 4 cancelled or timed out.",
    )
    watch.add_argument("session", help="the session id printed by submit")
    watch.add_argument("--timeout", type=finite_number, help="stop watching after this many seconds (exit 4)")
    watch.add_argument(
        "--interval", type=finite_number, default=0.5, help="seconds between reads of the document"
    )
    _common(watch)

    cancel = commands.add_parser(
        "cancel", help="ask the bridge to stop a session", description="Set cancelRequested on SESSION."
    )
    cancel.add_argument("session", help="the session id")
    _common(cancel)

    fetch = commands.add_parser(
        "fetch",
        help="download a finished session's results",
        description="Download SESSION's edited image and preview to OUTPUT_DIR as SESSION-edited.EXT and "
        "SESSION-preview.EXT. Exit 2 when the session is not done yet or failed for its input, 3 or 4 as "
        "watch for a session that failed or was cancelled.",
    )
    fetch.add_argument("session", help="the session id printed by submit")
    fetch.add_argument("--output-dir", type=Path, default=Path("."), help="where to write the files")
    _common(fetch, "bucket")

    config = commands.add_parser(
        "config",
        help="show or set the job defaults and experiments the bridges apply (no redeploy)",
        description="The runtime config document: defaults for what jobs omit (prompt, steps, guidance) and "
        "an optional experiment of weighted variants. `config show` prints it as JSON; `config set FILE` "
        "validates FILE with the rules of a job and writes it. Bridges pick it up within "
        "FLUXFILL_BRIDGE_RUNTIME_CONFIG_CACHE_S.",
    )
    config.set_defaults(config_parser=config)
    config_actions = config.add_subparsers(dest="config_command", metavar="ACTION", parser_class=type(config))
    _common(config_actions.add_parser("show", help="print the document as JSON"), "document")
    setting = config_actions.add_parser("set", help="validate a JSON file and write it as the document")
    setting.add_argument("file", type=Path, help="the document as JSON (see the README's example)")
    _common(setting, "document")

    dlq = commands.add_parser(
        "dlq",
        help="dead-lettered jobs: list them, replay them",
        description="Dead-lettered jobs: `dlq list` shows each with its reason, `dlq replay` starts them "
        "afresh.",
    )
    dlq.set_defaults(dlq_parser=dlq)
    actions = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", parser_class=type(dlq))
    listing = actions.add_parser(
        "list", help="show each dead-lettered job with its failure reason (leaves them queued)"
    )
    _common(listing, "dead_letter_subscription")
    replay = actions.add_parser("replay", help="requeue sessions and republish dead-lettered jobs")
    replay.add_argument("id", nargs="?", help="a message id or session id to replay")
    replay.add_argument("--all", action="store_true", help="replay every dead-lettered job")
    _common(replay, "dead_letter_subscription", "topic", "urgent_topic")


def run(args: argparse.Namespace) -> int:
    """Run one job command."""
    if args.command == "dlq" and args.dlq_command is None:
        args.dlq_parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "config" and args.config_command is None:
        args.config_parser.print_help(sys.stderr)
        return EXIT_USAGE
    from fluxfill.client.job_commands import run_job_command

    return run_job_command(args)
