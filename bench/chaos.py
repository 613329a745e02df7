"""The long chaos run: ``tests/chaos.py``'s rounds, many of them, with the figures printed.

    python bench/chaos.py [--rounds 300] [--seed N] [--json]

Each round starts real trainers (durability ``fsync``) against a real daemon and kills
something at a random moment: the daemon, the trainer, both, a team server mid-upload; or
tears a WAL's tail, flips bytes inside a WAL, floods the socket with malformed frames. Then
every run is read back: every acknowledged step, console line and summary value must be there
exactly once. Prints rounds, records checked, lost, duplicated, damage cases recovered,
malformed inputs tried, escapes (files outside the run roots) and daemon deaths not caused
by a kill; exits 1 if any is not zero.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from _common import emit, parser  # noqa: E402

import chaos  # noqa: E402


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--seed", type=int, default=None, help="replay a seed (default: a random one, printed)")
    p.add_argument("--kinds", nargs="+", choices=chaos.KINDS, default=None, help="only these kinds of rounds")
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    base = tempfile.mkdtemp(prefix="trackside-chaos-")
    t0 = time.monotonic()

    def progress(n, total, kind, stats):
        if not args.json and (n % 10 == 0 or n == total):
            print(
                f"  round {n}/{total} ({kind}): {stats['records_checked']:,} records checked, "
                f"{stats['lost']} lost, {stats['duplicated']} duplicated",
                file=sys.stderr,
                flush=True,
            )

    if not args.json:
        print(f"chaos: {args.rounds} rounds, seed {seed}", file=sys.stderr)
    try:
        os.makedirs(os.path.join(base, "s"))
        result = chaos.session(os.path.join(base, "s"), args.rounds, seed, progress, args.kinds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    stats = result.stats
    figures = {
        "seed": seed,
        "seconds": round(time.monotonic() - t0, 1),
        **stats,
        "kinds": result.kinds,
        "failures": result.failures[:50],
    }
    rows = [{"figure": k, "value": v} for k, v in stats.items()]
    rows += [{"figure": f"rounds of {k}", "value": v} for k, v in sorted(result.kinds.items())]
    notes = [f"seed {seed}; {figures['seconds']} s; replay with --seed {seed}"]
    notes += [f"FAILURE: {f}" for f in result.failures[:20]]
    emit(
        args,
        "chaos: kills, damaged WALs and garbage; every acknowledged record exactly once",
        figures,
        rows,
        ["figure", "value"],
        notes,
    )
    bad = (
        stats["lost"] or stats["duplicated"] or stats["escapes"] or stats["unexpected_daemon_deaths"] or result.failures
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
