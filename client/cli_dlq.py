"""`fluxfill dlq list | replay`: print dead-lettered jobs with their reason, and replay them."""

import argparse
import sys

from fluxfill.client.dead_letters import DeadLetter, DeadLetterQueue
from fluxfill.client.errors import EXIT_OK, InvalidInputError
from fluxfill.client.jobs import JobSystem


def run_dlq(jobs: JobSystem, args: argparse.Namespace) -> int:
    """List, or replay one (by message or session id) or all."""
    if args.dlq_command == "replay" and bool(args.id) == bool(args.all):
        raise InvalidInputError("replay needs exactly one of: an ID, or --all")
    queue = DeadLetterQueue(jobs)
    if args.dlq_command == "list":
        letters = queue.peek()
        for letter in letters:
            where = f"{letter.ref.user}/{letter.ref.session}" if letter.ref else "(no valid ids)"
            reason = " ".join(letter.reason.split())
            sys.stdout.write(f"{letter.message_id}\t{where}\t{letter.code}\t{reason}\n")
        sys.stderr.write(f"{len(letters)} dead-lettered job(s)\n")
        return EXIT_OK
    report = queue.replay(lambda letter: args.all or letter.matches(args.id), reason="fluxfill dlq replay")
    for letter, why in report.refused:
        sys.stderr.write(f"not replayed {letter.message_id} ({_session(letter)}): {why}\n")
    if args.id and not report.replayed:
        if report.refused:
            raise InvalidInputError(f"{args.id} was not replayed: {report.refused[0][1]}")
        raise InvalidInputError(f"no dead-lettered job with message or session id {args.id}")
    for letter in report.replayed:
        sys.stdout.write(f"replayed {letter.message_id} ({_session(letter)})\n")
    return EXIT_OK


def _session(letter: DeadLetter) -> str:
    return letter.ref.session if letter.ref else "(no valid ids)"
