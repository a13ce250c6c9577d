"""Issue 22's benchmark: what the normalization layers' gradient-noise-scale metrics add to
``analyze``.

A Pre-LN transformer (default 6 blocks, width 256, 4 heads) on continuous N(0, 1) tokens,
B = 16, T = 128, 4 seeds in one call. Each pair of calls differs only by the four ``gns_*``
metrics (per-example gradients of every LayerNorm's scale and bias, contracted in the backward
pass: :mod:`sigprop.metrics.gns`):

- ``light``: ``grad_norm`` alone vs ``grad_norm`` + gns (the backward pass is there either way;
  the worst case for the ratio);
- ``transformer``: sigprop's transformer metrics (token, attention, parameter gradients) plus
  ``grad_norm`` vs the same + gns.

Target: with / without <= 1.3 for both. Prints the medians of interleaved repeats (after one
compile call each) and their ratios.

    python benchmarks/gns.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import sigprop
from sigprop import metrics


def _timer(model, shape, seeds, names):
    return lambda: sigprop.analyze(model, shape, seeds=seeds, metrics=names)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 2 x 64 model, B 4, T 16, 2 seeds")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.quick:
        depth, width, b, t, seeds = 2, 64, 4, 16, 2
    else:
        depth, width, b, t, seeds = 6, 256, 16, 128, 4
    model = sigprop.transformer(depth, width, 4, n_classes=10)
    shape = (b, t, width)
    base = {"light": ("grad_norm",),
            "transformer": metrics.TRANSFORMER_METRICS + ("grad_norm",)}
    calls = {}
    for k, names in base.items():
        calls[f"{k}/without"] = _timer(model, shape, seeds, names)
        calls[f"{k}/with"] = _timer(model, shape, seeds, names + metrics.GNS_METRICS)
    first = {}
    for k, fn in calls.items():  # compile
        t0 = time.perf_counter()
        fn()
        first[k] = time.perf_counter() - t0
    times = {k: [] for k in calls}
    for _ in range(args.repeats):  # interleaved: drift in machine load hits every call alike
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"transformer {depth} x {width}, 4 heads, Pre-LN, N(0,1) tokens B {b} x T {t}, "
          f"{seeds} seeds in one call; medians of {args.repeats} interleaved repeats")
    out = {}
    for k in base:
        ratio = med[f"{k}/with"] / med[f"{k}/without"]
        out[k] = ratio
        print(f"  {k:12s} without gns {med[f'{k}/without']:.3f} s, with {med[f'{k}/with']:.3f} s"
              f": {ratio:.2f}x (target <= 1.3: {'ok' if ratio <= 1.3 else 'FAIL'}); first "
              f"calls {first[f'{k}/without']:.1f} s / {first[f'{k}/with']:.1f} s")
    return out


if __name__ == "__main__":
    main()
