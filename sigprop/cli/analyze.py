"""``sigprop analyze``: analyse one zoo model; print its final-layer metrics, save an .npz."""

from __future__ import annotations

import numpy as np

from sigprop import metrics as registry
from sigprop.analyses.analyze import analyze
from sigprop.cli.common import add_model_args, build_model, input_shape


def register(sub) -> None:
    a = sub.add_parser("analyze", help="analyse one model; print final-layer metrics, save .npz")
    add_model_args(a, model="cnn", norm="batchnorm")
    a.add_argument("--classes", type=int, default=100)
    a.add_argument("--batch", type=int, default=64)
    a.add_argument("--image", type=int, default=32)
    a.add_argument("--seeds", type=int, default=3)
    a.add_argument("--key", type=int, default=0)
    a.add_argument("--out", default=None, help="save the LayerMetrics to this .npz")
    a.add_argument("--metrics", default=None,
                   help="comma-separated metric names (sigprop.metrics.names()); default: the "
                        "default set, and for --model transformer also every token, attention "
                        "and parameter-gradient metric")
    a.set_defaults(run=run)


def run(args) -> int:
    model = build_model(args)
    shape = input_shape(args)
    if args.metrics:
        wanted = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    elif args.model == "transformer":
        wanted = registry.DEFAULT_METRICS + registry.TRANSFORMER_METRICS
    else:
        wanted = None
    res = analyze(model, shape, seeds=args.seeds, key=args.key, metrics=wanted)
    print(f"{type(model).__name__} norm={args.norm} inputs={shape} seeds={args.seeds}")
    for metric in res.metric_names:
        v = np.asarray(res[metric])[:, -1]
        print(f"  final {metric:<22} {v.mean():.4g} ± {v.std():.2g}  ({res.names_of(metric)[-1]})")
    if args.out:
        print(f"wrote {res.save(args.out)}")
    return 0
