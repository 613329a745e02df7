"""A small real training job logged with trackside: logistic regression in numpy, trained with
data-parallel gradient averaging by rank 0 and two worker processes (ranks 1 and 2).

Every rank logs its own loss at each step; rank 0 also logs the averaged loss and accuracy.
The daemon merges the three writers' entries of a step into one row. At the end the script
reads the run back from the local store and prints it.

    python examples/train.py [--steps 200] [--dir DIR]
"""

import argparse
import multiprocessing as mp
import os

import numpy as np

import trackside

FEATURES = 20


def make_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    true_w = np.random.default_rng(0).normal(size=FEATURES)
    x = rng.normal(size=(n, FEATURES))
    y = (x @ true_w + 0.5 * rng.normal(size=n) > 0).astype(float)
    return x, y


def loss_and_grad(w, x, y):
    p = 1.0 / (1.0 + np.exp(-(x @ w)))
    eps = 1e-12
    loss = -np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))
    return loss, x.T @ (p - y) / len(y), p


def worker(rank: int, steps: int, weights, grads, barrier):
    """Ranks 1 and 2: compute gradients on their shard and log their own loss."""
    os.environ["RANK"] = str(rank)
    run = trackside.init()  # joins the parent's run (TRACKSIDE_RUN_ID is inherited)
    x, y = make_data(2000, seed=rank)
    for step in range(steps):
        barrier.wait()  # rank 0 has published the weights of this step
        w = np.frombuffer(weights.get_obj())
        loss, g, _ = loss_and_grad(w, x, y)
        np.frombuffer(grads[rank].get_obj())[:] = g
        run.log({f"rank{rank}/loss": float(loss)}, step=step)
        barrier.wait()  # gradients ready
    run.finish()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--dir", default=None, help="parent folder of the run root (default: current folder)")
    args = parser.parse_args()

    run = trackside.init(
        project="examples",
        name="logreg-3-ranks",
        dir=args.dir,
        config={"lr": args.lr, "steps": args.steps, "ranks": 3, "features": FEATURES},
    )
    run.define_metric("accuracy", summary="max,last")
    run.define_metric("loss", summary="min,last")

    ctx = mp.get_context("fork")
    weights = ctx.Array("d", FEATURES)
    grads = [ctx.Array("d", FEATURES) for _ in range(3)]
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=worker, args=(r, args.steps, weights, grads, barrier)) for r in (1, 2)]
    for p in procs:
        p.start()

    x, y = make_data(2000, seed=0)
    xv, yv = make_data(1000, seed=99)
    w = np.frombuffer(weights.get_obj())
    for step in range(args.steps):
        barrier.wait()
        loss, g, _ = loss_and_grad(w, x, y)
        np.frombuffer(grads[0].get_obj())[:] = g
        barrier.wait()
        avg = sum(np.frombuffer(gr.get_obj()) for gr in grads) / 3
        w -= args.lr * avg
        _, _, pv = loss_and_grad(w, xv, yv)
        run.log(
            {
                "rank0/loss": float(loss),
                "loss": float(loss),
                "accuracy": float(np.mean((pv > 0.5) == yv)),
                "grad_norm": float(np.linalg.norm(avg)),
            },
            step=step,
        )
    for p in procs:
        p.join()
    run.finish()

    stored = trackside.Api(run.root).run(run.id)
    rows = stored.history()
    print(f"\nrun {stored.id} ({stored.project}/{stored.name}) in {run.root}: state {stored.state}, {len(rows)} rows")
    print("config :", stored.config)
    print("summary:", {k: v for k, v in stored.summary.items() if not k.startswith("_")})
    for row in rows[:3] + rows[-2:]:
        print("  ", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "_timestamp"})
    print(
        f"\nsee it in the page: .venv/bin/trackside ui {run.root}  then open http://127.0.0.1:8080/runs/{run.id}/charts"
    )


if __name__ == "__main__":
    main()
