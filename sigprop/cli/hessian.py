"""``sigprop hessian``: the loss Hessian spectrum of a zoo model at initialization."""

from __future__ import annotations

import time

from sigprop.analyses.hessian import spectrum
from sigprop.cli.common import add_model_args, build_model, input_shape


def register(sub):
    """Add the ``hessian`` subcommand to the ``argparse`` subparsers ``sub``; returns it."""
    h = sub.add_parser(
        "hessian", help="loss Hessian spectrum at init: lambda_max/min, top-5, outlier ratio",
        description="Lanczos + stochastic Lanczos quadrature of the loss Hessian of a zoo "
                    "model at initialization (batch statistics in train mode); prints "
                    "lambda_max, lambda_min, the top 5 eigenvalues, lambda_1/lambda_K (K = "
                    "--classes) and the trace, per seed.")
    add_model_args(h, model="mlp", norm="layernorm")
    h.add_argument("--classes", type=int, default=10)
    h.add_argument("--batch", type=int, default=64)
    h.add_argument("--image", type=int, default=32)
    h.add_argument("--order", type=int, default=90, help="Lanczos steps per probe")
    h.add_argument("--probes", type=int, default=8, help="SLQ probe vectors per seed")
    h.add_argument("--seeds", type=int, default=1)
    h.add_argument("--key", type=int, default=0)
    h.add_argument("--params", default=None,
                   help="glob over parameter paths (e.g. 'layer03/*', '*Norm*'); default all")
    h.add_argument("--gauss-newton", action="store_true", help="the Gauss-Newton matrix")
    h.add_argument("--out", default=None, help="save the spectrum to this .npz")
    h.set_defaults(run=run)
    return h


def run(args) -> int:
    """Run ``sigprop hessian``; print one block per seed. Returns the exit status."""
    model = build_model(args)
    shape = input_shape(args)
    what = "Gauss-Newton" if args.gauss_newton else "Hessian"
    print(f"{type(model).__name__} norm={args.norm} inputs={shape} {what} params="
          f"{args.params or 'all'} order={args.order} probes={args.probes} seeds={args.seeds}")
    start = time.perf_counter()
    res = spectrum(model, shape, params=args.params, order=args.order, probes=args.probes,
                   seeds=args.seeds, key=args.key, gauss_newton=args.gauss_newton)
    took = time.perf_counter() - start
    k = min(args.classes, res.order)
    top = res.top(min(5, res.order))
    ratio = res.outlier_ratio(k)
    for s in range(args.seeds):
        print(f"  seed {s}: lambda_max {res.lambda_max[s]:.6g}  lambda_min "
              f"{res.lambda_min[s]:.6g}  trace {res.trace[s]:.6g}")
        print(f"          top-{top.shape[1]} " + " ".join(f"{v:.6g}" for v in top[s])
              + f"  lambda_1/lambda_{k} {ratio[s]:.4g}")
    print(f"  {res.n_params} parameters, {took:.1f}s (compile included)")
    if args.out:
        print(f"wrote {res.save(args.out)}")
    return 0
