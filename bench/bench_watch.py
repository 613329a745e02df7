"""``run.watch``: what it costs a training step that does not log, and what a logging step costs.

A small MLP (``--width`` wide, 3 hidden layers, batch 64) trains with SGD on CPU; every step
does forward, backward, the optimizer step and ``run.log({"loss": ...})`` into a run of a
private daemon. Blocks of ``--steps`` steps alternate between an unwatched model and the same
model under ``run.watch(log="all", log_freq=...)`` with a frequency that never comes up inside
a block, ``--blocks`` times each; the overhead is the median of the watched blocks' step time
over the median of the others (and the median of the ratios of
blocks run side by side). Then the hook itself: a step that does not log differs from an
unwatched one by the model's forward pre-hook alone (one call of the watched model per step),
so its cost is timed on its own, on a module that does nothing (``torch.nn.Identity``), as the
fastest of ``--repeat`` runs of 20,000 calls with and without the hook; that cost over the
step time is the overhead the target applies to. Then a logging step: ``watch(log="all",
log_freq=1)`` times the same steps, each logging a gradient and a parameter histogram of every
parameter.

    python bench/bench_watch.py [--width 256] [--steps 100] [--blocks 30] [--json]

Caveats: on a shared machine the noise between blocks is larger than the overhead (the
block figure moves by several percent either way from run to run, and can come out negative);
the hook's own cost, timed apart, is the steady figure. One torch thread keeps step times
steady. On a GPU the
non-logging cost is the same Python counter, and a logging step adds one small copy per tensor.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, parser

TARGET_PERCENT = 1.0


def main() -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--steps", type=int, default=100, help="steps per block")
    p.add_argument("--blocks", type=int, default=30, help="blocks of each kind")
    p.add_argument("--repeat", type=int, default=7, help="runs of 20,000 calls timing the hook")
    args = p.parse_args()

    import torch
    import trackside
    from trackside.hooks.torch import watch

    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="bench-watch-")
    os.environ.update(TRACKSIDE_DAEMON_DIR=os.path.join(tmp, "daemon"), TRACKSIDE_DIR=os.path.join(tmp, "trackside"))
    try:
        torch.manual_seed(0)
        w = args.width
        model = torch.nn.Sequential(
            torch.nn.Linear(w, w),
            torch.nn.ReLU(),
            torch.nn.Linear(w, w),
            torch.nn.ReLU(),
            torch.nn.Linear(w, w),
            torch.nn.ReLU(),
            torch.nn.Linear(w, 1),
        )
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x, y = torch.randn(64, w), torch.randn(64, 1)
        run = trackside.init(
            project="bench-watch", settings={"console": False, "system_metrics": False, "durability": "none"}
        )

        def block(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                opt.step()
                run.log({"loss": loss.item()})
            return (time.perf_counter() - t0) / n

        block(args.steps)  # warm-up
        plain, watched = [], []
        never = args.steps * args.blocks * 10
        for _ in range(args.blocks):
            plain.append(block(args.steps))
            (hooks,) = watch(run, model, log="all", log_freq=never)
            hooks.calls = 1  # past the first call, which logs: measure steps that do not
            watched.append(block(args.steps))
            run.unwatch()
        run.watch(model, log="all", log_freq=1)
        logging = block(max(args.steps // 10, 5))
        run.unwatch()
        hook_s = hook_cost(run, watch, args.repeat)
        run.finish()
    finally:
        from trackside.cli import main as cli

        cli(["daemon", "stop"])
        shutil.rmtree(tmp, ignore_errors=True)

    # blocks run in pairs, side by side in time: the median of the pairs' ratios cancels most of
    # the drift of a shared machine; the fastest blocks of each kind are a second opinion
    overhead = (statistics.median(h / b for h, b in zip(watched, plain)) - 1) * 100
    base, hooked = statistics.median(plain), statistics.median(watched)
    overhead_fastest = (min(watched) / min(plain) - 1) * 100
    hook_percent = hook_s / base * 100
    n_params = len(list(model.parameters()))
    figures = {
        "torch": torch.__version__,
        "width": w,
        "parameters": sum(q.numel() for q in model.parameters()),
        "step_us": base * 1e6,
        "watched_step_us": hooked * 1e6,
        "overhead_percent": overhead,
        "overhead_fastest_percent": overhead_fastest,
        "hook_us": hook_s * 1e6,
        "hook_percent": hook_percent,
        "logging_step_us": logging * 1e6,
        "histograms_per_logging_step": 2 * n_params,
        "target_percent": TARGET_PERCENT,
    }
    rows = [
        {"case": "no watch", "step (us)": base * 1e6, "vs no watch (%)": 0.0},
        {"case": "watch, step does not log", "step (us)": hooked * 1e6, "vs no watch (%)": overhead},
        {"case": "  (fastest blocks)", "step (us)": min(watched) * 1e6, "vs no watch (%)": overhead_fastest},
        {
            "case": "watch, step does not log: the hook alone",
            "step (us)": hook_s * 1e6,
            "vs no watch (%)": hook_percent,
        },
        {
            "case": f"watch, step logs {2 * n_params} histograms",
            "step (us)": logging * 1e6,
            "vs no watch (%)": (logging - base) / base * 100,
        },
    ]
    emit(
        args,
        "run.watch: cost per training step",
        figures,
        rows,
        ["case", "step (us)", "vs no watch (%)"],
        [
            (
                f"torch {torch.__version__}, MLP width {w} ({figures['parameters']:,} parameters), batch 64, 1 thread; "
                f"medians of {args.blocks} blocks of {args.steps} steps; target: < {TARGET_PERCENT}% on steps that do not log"
            ),
            (
                f"the hook alone: {hook_s * 1e6:.2f} us per call of the model, {hook_percent:.3f}% of a step "
                f"({'within' if hook_percent < TARGET_PERCENT else 'ABOVE'} the target)"
            ),
        ],
    )
    return 0


def hook_cost(run, watch, repeat: int, calls: int = 20_000) -> float:
    """Seconds a watched module's call costs more than an unwatched one's, when it does not log."""
    import timeit

    import torch

    m, x = torch.nn.Identity(), torch.zeros(1)

    def fastest() -> float:
        return min(timeit.repeat(lambda: m(x), number=calls, repeat=repeat)) / calls

    plain = fastest()
    (hooks,) = watch(run, m, log="all", log_freq=10**12)
    hooks.calls = 1  # past the first call, which logs
    watched = fastest()
    run.unwatch(m)
    return max(watched - plain, 0.0)


if __name__ == "__main__":
    sys.exit(main())
