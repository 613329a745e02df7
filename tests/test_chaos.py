"""The standing chaos test: daemons, trainers and a server killed at random moments, WALs torn
and damaged, garbage on the socket; then every acknowledged record is read back exactly once.
A few dozen rounds by default; ``TRACKSIDE_CHAOS_ROUNDS=N`` for more, ``TRACKSIDE_CHAOS_SEED``
to replay a seed (printed at the start). ``bench/chaos.py`` runs the long version."""

import os
import random

import chaos


def test_chaos_loses_and_duplicates_nothing(tmp_path, capsys):
    rounds = int(os.environ.get("TRACKSIDE_CHAOS_ROUNDS", "21"))
    seed = int(os.environ.get("TRACKSIDE_CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))
    with capsys.disabled():
        print(f"\nchaos: {rounds} rounds, seed {seed} (TRACKSIDE_CHAOS_SEED={seed} replays it)")
    base = tmp_path / "chaos"
    base.mkdir()
    result = chaos.session(str(base), rounds, seed)
    stats = result.stats
    assert not result.failures, "\n".join(result.failures[:20])
    assert stats["rounds"] == rounds and set(result.kinds) == set(chaos.KINDS) or rounds < len(chaos.KINDS)
    assert stats["lost"] == stats["duplicated"] == stats["escapes"] == stats["unexpected_daemon_deaths"] == 0
    assert stats["records_checked"] > 0 and stats["malformed_inputs"] > 0
