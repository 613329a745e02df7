"""The WAL codec: the Cython extension against its pure-Python twin.

Encodes and decodes batches of log entries of 10 and of 100 float values (realistic metric
names), prints entries/s and MB/s of each implementation, the speedup, and the size of an entry
in the WAL next to the same dict as msgpack. msgspec (msgpack of the same entry tuples, without
framing, checksum or key interning) is shown as a peer for scale.

    python bench/bench_codec.py [--json] [--batch 256] [--repeat 7]
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, median, parser  # noqa: E402

import msgspec  # noqa: E402

from trackside._native import _twin  # noqa: E402

try:
    from trackside._native import _codec
except ImportError:  # pragma: no cover - an unbuilt checkout
    _codec = None

T0 = 1_764_215_400_000_000  # microseconds since the epoch

# What a training loop logs every step ...
KEYS_10 = [
    "train/loss",
    "train/accuracy",
    "train/learning_rate",
    "train/grad_norm",
    "train/tokens_per_second",
    "train/epoch",
    "val/loss",
    "val/accuracy",
    "system/gpu_utilization",
    "system/gpu_memory_allocated",
]
# ... and what a per-layer monitor adds (25 layers x 4 statistics).
KEYS_100 = [
    f"model/layers.{i}.{part}"
    for i in range(25)
    for part in ("attn/grad_norm", "attn/weight_norm", "mlp/grad_norm", "mlp/act_mean")
]

SIZE_TARGET = 1_000_000  # entries/s of 10 floats the Cython encoder must reach
MIN_SAMPLE_S = 0.05


def make_entries(keys: list[str], n: int, seed: int = 0) -> list[tuple]:
    """``n`` entries as ``log()`` produces them: a fresh dict per step, step and time set."""
    rnd = random.Random(seed)
    return [(i, None, T0 + i * 1000, {k: rnd.random() * 10 for k in keys}, None) for i in range(n)]


def measure(fn, repeat: int) -> float:
    """Seconds per call: the median of ``repeat`` samples, each at least MIN_SAMPLE_S long."""
    loops = 1
    while True:
        t = time.perf_counter()
        for _ in range(loops):
            fn()
        if time.perf_counter() - t >= MIN_SAMPLE_S:
            break
        loops *= 2
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - t) / loops)
    return median(samples)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256, help="entries per batch (default 256)")
    p.add_argument("--repeat", type=int, default=7, help="samples per figure; the median is shown")
    args = p.parse_args()

    impls = [("python", _twin)] + ([("cython", _codec)] if _codec is not None else [])
    results: dict = {}
    rows = []
    for width, keys in ((10, KEYS_10), (100, KEYS_100)):
        entries = make_entries(keys, args.batch)
        record = _twin.encode_batch(1, 1, entries)
        body = record[16:]
        peer = msgspec.msgpack.Encoder()
        peer_bytes = peer.encode(entries)
        peer_dec = msgspec.msgpack.Decoder()
        runs = [(name, "encode", (lambda m=mod: m.encode_batch(1, 1, entries)), len(record)) for name, mod in impls]
        runs += [(name, "decode", (lambda m=mod: m.decode_batch(body)), len(record)) for name, mod in impls]
        runs += [
            ("msgspec (peer)", "encode", lambda: peer.encode(entries), len(peer_bytes)),
            ("msgspec (peer)", "decode", lambda: peer_dec.decode(peer_bytes), len(peer_bytes)),
        ]
        for name, op, fn, nbytes in runs:
            s = measure(fn, args.repeat)
            fig = {"entries_per_s": args.batch / s, "mb_per_s": nbytes / s / 1e6, "us_per_batch": s * 1e6}
            results.setdefault(name, {}).setdefault(f"{width}_floats", {})[op] = fig
        for op in ("encode", "decode"):
            base = results["python"][f"{width}_floats"][op]["entries_per_s"]
            for name in [n for n, _ in impls] + ["msgspec (peer)"]:
                fig = results[name][f"{width}_floats"][op]
                fig["x_twin"] = fig["entries_per_s"] / base
                rows.append(
                    {
                        "values": width,
                        "op": op,
                        "codec": name,
                        "entries/s": round(fig["entries_per_s"]),
                        "MB/s": fig["mb_per_s"],
                        "us/batch": fig["us_per_batch"],
                        "x twin": fig["x_twin"],
                    }
                )

    # Size: one 10-float entry in the WAL against the same values dict as msgpack.
    entries = make_entries(KEYS_10, args.batch)
    whole = len(_twin.encode_batch(1, 1, entries))
    first = len(_twin.encode_batch(1, 1, entries[:1]))
    steady = (whole - first) / (args.batch - 1)  # an entry after the first: SAME_KEYS
    msgpack = median([len(msgspec.msgpack.encode(e[3])) for e in entries])
    size = {
        "wal_bytes_per_entry": whole / args.batch,
        "wal_bytes_per_entry_steady": steady,
        "wal_bytes_first_entry_record": first,
        "msgpack_bytes_per_values_dict": msgpack,
        "ratio_wal_to_msgpack": (whole / args.batch) / msgpack,
        "ratio_steady_to_msgpack": steady / msgpack,
    }
    speedup = (
        {
            f"{w}_floats": {op: results["cython"][f"{w}_floats"][op]["x_twin"] for op in ("encode", "decode")}
            for w in (10, 100)
        }
        if _codec is not None
        else {}
    )
    figures = {
        "batch_entries": args.batch,
        "statistic": f"median of {args.repeat} samples of >= {MIN_SAMPLE_S}s",
        "keys_10": KEYS_10,
        "keys_100": KEYS_100,
        "results": results,
        "speedup_cython_over_python": speedup,
        "size_10_floats": size,
    }
    notes = [
        "",
        f"batches of {args.batch} entries; each figure is the median of {args.repeat} samples "
        f"(each >= {MIN_SAMPLE_S}s); GC on, as in a real process",
        "MB/s counts the framed WAL record (encode output = decode input); msgspec's counts its msgpack",
        "10 keys: " + ", ".join(KEYS_10),
        f"100 keys: {KEYS_100[0]}, {KEYS_100[1]}, ... {KEYS_100[-1]} (25 layers x 4 statistics)",
        "",
        "size of one entry of 10 floats:",
        f"  WAL, amortized over a {args.batch}-entry record (framing, header, key names): {size['wal_bytes_per_entry']:.1f} B",
        f"  WAL, each entry after the first (SAME_KEYS; flags, step, time delta, values): {steady:.1f} B",
        f"  msgpack of the values dict with its key strings (no step, no time): {msgpack} B",
        f"  ratio WAL/msgpack: {size['ratio_wal_to_msgpack']:.2f} amortized, {size['ratio_steady_to_msgpack']:.2f} steady",
    ]
    if speedup:
        enc10 = results["cython"]["10_floats"]["encode"]["entries_per_s"]
        notes += [
            "",
            "speedup cython/python: "
            + ", ".join(f"{w}: encode {s['encode']:.1f}x, decode {s['decode']:.1f}x" for w, s in speedup.items()),
            f"target: cython encode of 10 floats >= {SIZE_TARGET:,} entries/s: "
            + ("met" if enc10 >= SIZE_TARGET else "NOT MET")
            + f" ({enc10:,.0f})",
        ]
    notes += [
        "",
        "caveats: one process, one thread, a warm cache and the same batch over and over; the "
        "encoder also validates every value and computes a CRC-32 of the record, msgspec does "
        "neither and writes every key string of every entry. Figures move by ~10% between runs "
        "on a shared 2-core machine.",
    ]
    emit(
        args,
        "codec: Cython extension vs pure-Python twin",
        figures,
        rows,
        ["values", "op", "codec", "entries/s", "MB/s", "us/batch", "x twin"],
        notes,
    )


if __name__ == "__main__":
    main()
