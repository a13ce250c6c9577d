"""The cost of recording during training: ``sigprop.train`` recording every ``k`` steps vs the
same training program recording nothing.

One run prints, from interleaved repeats (compile excluded, each program warmed up first):

- ``record / bare``: wall time of ``train(..., record_every=k)`` (every default ``analyze``
  metric on the probe batch, similar-batch correlation, train loss / accuracy and gradient
  cosines over ``confusion_batches`` minibatches) over the same program without any record
  (target of the issue: <= 1.15 at k = 10);
- the same with ``confusion_batches=2`` (one cosine instead of six), ``confusion_batches=1``
  (no gradient cosines), ``metrics=()`` (the losses and cosines only) and both (the losses
  only: the record's first minibatch is the next step's, whose gradient that step reuses, so
  it should cost nothing), which split the cost;
- the bound: the time of one record (``(run - bare) / records``) in units of one step
  (``bare / steps``): recording every ``k`` steps costs ``1 + that / k``.

    python benchmarks/train.py [--steps 200] [--record-every 10] [--repeats 3] [--width 256]
"""

from __future__ import annotations

import os

# On a shared CPU, multi-threaded OpenBLAS (the LAPACK behind jaxlib's eigvalsh kernels)
# spin-waits for busy cores: a 128 x 128 eigenvalue call then stalled for seconds (analyze of
# this MLP took 0.1-4.7 s, 25-140 ms with one thread). One thread, unless the user chose.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import sigprop  # noqa: E402
from sigprop.analyses.train import train  # noqa: E402
from sigprop.util import data  # noqa: E402


def _timed(fn):
    start = time.perf_counter()
    res = fn()
    leaves = jax.tree_util.tree_leaves(res.variables)
    jax.block_until_ready(leaves)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--record-every", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--norm", default="batchnorm")
    p.add_argument("--seeds", type=int, default=1)
    args = p.parse_args(argv)

    images, labels = data.mnist()
    model = sigprop.mlp(args.depth, args.width, norm=args.norm, n_classes=10)
    common = dict(steps=args.steps, batch_size=args.batch_size, seeds=args.seeds,
                  learning_rate=0.05)
    k = args.record_every
    runs = {
        "bare": dict(_record=False),
        "record": dict(),
        "record, 2 batches": dict(confusion_batches=2),
        "metrics, no cosines": dict(confusion_batches=1),
        "cosines, no metrics": dict(metrics=()),
        "losses only": dict(metrics=(), confusion_batches=1),
    }
    runs = {name: (lambda kw=kw: train(model, (images, labels), record_every=k, **common, **kw))
            for name, kw in runs.items()}
    times = {name: [] for name in runs}
    for fn in runs.values():  # compile
        fn()
    for _ in range(args.repeats):
        for name, fn in runs.items():  # interleaved: the machine's load hits all alike
            times[name].append(_timed(fn))
    med = {name: statistics.median(t) for name, t in times.items()}
    records = -(-args.steps // k) + 1
    print(f"backend {jax.default_backend()}: mlp({args.depth}, {args.width}, {args.norm}) on "
          f"MNIST (5,000), batch {args.batch_size}, {args.steps} steps, record every {k} "
          f"({records} records), {args.seeds} seed(s); medians of {args.repeats} repeats")
    for name, t in med.items():
        ratio = "" if name == "bare" else f"   {name} / bare = {t / med['bare']:.3f}"
        print(f"  {name:<24} {t:8.3f} s{ratio}")
    per_step = med["bare"] / args.steps
    print(f"  one step {1e3 * per_step:.2f} ms; one record, in steps:")
    for name in list(runs)[1:]:
        per_record = (med[name] - med["bare"]) / records
        print(f"    {name:<22} {1e3 * per_record:7.2f} ms = {per_record / per_step:5.2f} steps")
    ratio = med["record"] / med["bare"]
    print(f"record / bare = {ratio:.3f}: {'PASS' if ratio <= 1.15 else 'FAIL'} (target <= 1.15)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
