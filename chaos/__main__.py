"""`python -m chaos [chaos|saturation|soak|priority|fairness]`: runs against real parts; exits 1 when an
invariant breaks."""

import argparse
import sys
import tempfile
from pathlib import Path

from chaos.chaos_run import ChaosOptions, run_chaos
from chaos.report import print_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument(
        "mode", nargs="?", default="chaos", choices=["chaos", "saturation", "soak", "priority", "fairness"]
    )
    parser.add_argument("--jobs", type=int, default=500, help="jobs in the chaos mix (default 500)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a ~40-job run, as `make test` does (with --delivery push: 32 jobs, the push path's faults)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--delivery",
        choices=["pull", "push"],
        default="pull",
        help="chaos: the bridges pull (the worker pool), or take pushes through a router (the push service)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="jobs published per second (chaos 10, soak 3: below capacity)",
    )
    parser.add_argument("--settle-timeout", type=float, default=600.0, help="chaos: seconds to wait")
    parser.add_argument("--duration", type=float, default=1800.0, help="soak: seconds (default 30 min)")
    parser.add_argument("--run-dir", type=Path, default=None, help="logs of Triton and the bridges")
    args = parser.parse_args(argv)
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="fluxfill-chaos-"))
    if args.mode == "chaos":
        options = (
            (ChaosOptions.quick_push(args.seed) if args.delivery == "push" else ChaosOptions.quick(args.seed))
            if args.quick
            else ChaosOptions(
                jobs=args.jobs,
                seed=args.seed,
                rate_per_s=args.rate or ChaosOptions.rate_per_s,
                settle_timeout_s=args.settle_timeout,
                delivery=args.delivery,
            )
        )
        report = run_chaos(options, run_dir)
        print_chaos(report, run_dir)
        return 0 if report.ok else 1
    if args.mode == "saturation":
        from chaos.report import print_saturation
        from chaos.saturation import SaturationOptions, run_saturation

        saturation = run_saturation(SaturationOptions(quick=args.quick, seed=args.seed), run_dir)
        print_saturation(saturation, run_dir)
        return 0 if saturation.ok else 1
    if args.mode in {"priority", "fairness"}:
        from chaos.queueing import QueueingOptions, run_fairness, run_priority
        from chaos.report import print_fairness, print_priority

        queueing = QueueingOptions(seed=args.seed)
        if args.mode == "priority":
            priority = run_priority(queueing, run_dir)
            print_priority(priority, run_dir)
            return 0 if priority.ok else 1
        fairness = run_fairness(queueing, run_dir)
        print_fairness(fairness, run_dir)
        return 0 if fairness.ok else 1
    from chaos.report import print_soak
    from chaos.soak import SoakOptions, run_soak

    soak = run_soak(
        SoakOptions(duration_s=args.duration, rate_per_s=args.rate or SoakOptions.rate_per_s, seed=args.seed),
        run_dir,
    )
    print_soak(soak, run_dir)
    return 0 if soak.ok else 1


if __name__ == "__main__":
    sys.exit(main())
