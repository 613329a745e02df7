"""The LocalSink: records of a run's WAL, replayed into another store, make the same run, once."""

import asyncio
import os

import pytest

import trackside
from trackside import _native as codec
from trackside.daemon.sink import LocalSink, check_file_path
from trackside.daemon.records import BadRecord
from trackside.daemon.wal import read_records


def log_a_run(ts, steps=300):
    run = trackside.init(project="p", name="n", config={"lr": 0.1})
    for i in range(steps):
        run.log({"loss": 1.0 / (i + 1), "acc": i / steps})
        if i % 50 == 0:
            run.log({"amended": i}, step=max(i - 1, 0))  # a late step, amended
    run.summary["best"] = 7
    run.define_metric("loss", summary="min")
    run.finish()
    return run.id


def wal_records(root, run_id):
    wal = os.path.join(root, "runs", run_id, "wal")
    return [codec.frame(r.type, r.body) for r in read_records(wal)]


def run_info(root, run_id):
    return {"project": "p", "settings": {"durability": "flush"}}


async def replay(target, run_id, batches, info, **kw):
    sink = LocalSink(target, **kw)
    await sink.start()
    totals = [0, 0]
    try:
        for batch in batches:
            stored, dup = await sink.append(run_id, info, batch)
            totals[0] += stored
            totals[1] += dup
        await sink.wait_stored(run_id)
    finally:
        await sink.close()
    return totals


def history(root, run_id):
    return trackside.Api(root).run(run_id).history()


def test_replayed_run_matches_the_daemons(ts, tmp_path):
    run_id = log_a_run(ts)
    records = wal_records(ts.root, run_id)
    target = str(tmp_path / "copy")
    stored, dup = asyncio.run(
        replay(target, run_id, [records[i : i + 7] for i in range(0, len(records), 7)], run_info(ts.root, run_id))
    )
    assert (stored, dup) == (len(records), 0)
    original, copy = trackside.Api(ts.root).run(run_id), trackside.Api(target).run(run_id)
    assert copy.history() == original.history()
    assert copy.summary == original.summary
    assert copy.config == {"lr": 0.1}
    assert copy.state == "finished"


def synthetic_records(n=100, writers=(11, 22)):
    """One LOG record per (writer, seq): each writer logs ``loss`` at steps 0..n-1, one a call."""
    out = []
    for seq in range(1, n + 1):
        for w in writers:
            out.append(codec.encode_batch(w, seq, [(seq - 1, True, seq * 1000, {f"loss{w}": float(seq)}, None)]))
    return out


def test_replaying_twice_stores_nothing_twice(tmp_path):
    records = synthetic_records()
    target = str(tmp_path / "copy")
    info = {"project": "p", "settings": {"durability": "flush", "merge_window": 0.1}}
    assert asyncio.run(replay(target, "r1", [records[:10]], info)) == [10, 0]
    # a retried batch that overlaps what is held, then everything again, in one sink's life
    stored, dup = asyncio.run(replay(target, "r1", [records[5:20], records], info))
    assert stored == len(records) - 10
    assert dup == 5 + 20
    rows = history(target, "r1")
    assert [r["_step"] for r in rows] == list(range(100))
    assert all(r["loss11"] == r["loss22"] == r["_step"] + 1 for r in rows)


def test_a_bad_record_is_refused_and_the_ones_before_it_kept(ts, tmp_path):
    run_id = log_a_run(ts, steps=20)
    records = wal_records(ts.root, run_id)
    broken = bytearray(records[3])
    broken[-1] ^= 0xFF
    target = str(tmp_path / "copy")

    async def go():
        sink = LocalSink(target)
        await sink.start()
        try:
            with pytest.raises(BadRecord, match="checksum"):
                await sink.append(run_id, run_info(ts.root, run_id), records[:3] + [bytes(broken)])
            assert await sink.append(run_id, {}, records) == (len(records) - 3, 3)
            await sink.wait_stored(run_id)
        finally:
            await sink.close()

    asyncio.run(go())
    assert history(target, run_id) == history(ts.root, run_id)


def test_a_sink_restarted_before_storing_materializes_at_start(ts, tmp_path):
    """Records durable in the sink's WAL but not yet stored (a crash between the two) are
    stored when the sink starts again, without another upload."""
    run_id = log_a_run(ts, steps=50)
    records = wal_records(ts.root, run_id)
    target = str(tmp_path / "copy")
    from trackside.daemon.wal import WAL

    os.makedirs(os.path.join(target, "runs", run_id))
    with WAL(os.path.join(target, "runs", run_id, "wal"), durability="flush") as wal:
        for r in records:
            wal.append(r)
        wal.commit()
    asyncio.run(replay(target, run_id, [], {}))
    assert history(target, run_id) == history(ts.root, run_id)


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "runs/../x",
        "runs/r1/wal/000.wal",
        "runs/r1/run.json",
        "other/x",
        "runs/r1",
        "a\\b",
        "",
        "runs/bad id/x",
        "artifacts",
    ],
)
def test_file_paths_outside_the_run_folders_are_refused(path):
    with pytest.raises(BadRecord):
        check_file_path(path)


def test_files_are_written_once_and_listed_as_missing_until_then(tmp_path):
    async def go():
        sink = LocalSink(str(tmp_path))
        await sink.start()
        try:
            paths = ["runs/r1/media/ab/abc.png", "artifacts/media/cd/cde.bin"]
            assert sink.missing_files(paths) == paths
            assert sink.put_file(paths[0], [b"12", b"34"]) == 4
            assert sink.missing_files(paths) == paths[1:]
            sink.put_file(paths[0], [b"other"])  # content-addressed: the first copy stays
            with open(tmp_path / paths[0], "rb") as f:
                assert f.read() == b"1234"
        finally:
            await sink.close()

    asyncio.run(go())
