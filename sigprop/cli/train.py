"""``sigprop train``: train a zoo model on real data with optax, recording the metrics."""

from __future__ import annotations

import time

import numpy as np

from sigprop.analyses.train import OPTIMIZERS, TrainResult, train
from sigprop.cli.common import add_model_args, build_model


def _load_data(spec: str):
    from sigprop.util import data as data_lib

    if spec == "mnist":
        return data_lib.mnist()
    if spec == "digits":
        return data_lib.digits()
    if spec.startswith("cifar10:"):
        return data_lib.cifar10(spec.split(":", 1)[1])
    raise ValueError(f"--data {spec!r}; allowed: mnist, digits, cifar10:PATH")


def register(sub) -> None:
    """Add ``sigprop train`` to the subparsers ``sub``."""
    t = sub.add_parser("train", help="train a zoo model on real data, recording the metrics",
                       description="Train with optax for --steps steps (a lax.scan), recording "
                                   "every analyze metric, the train (and held-out) loss and "
                                   "accuracy and the gradient cosines every --record-every "
                                   "steps; print the curve, save a TrainResult .npz.")
    add_model_args(t, model="mlp", norm="batchnorm")
    t.add_argument("--classes", type=int, default=10)
    t.add_argument("--data", default="mnist", help="mnist, digits or cifar10:PATH")
    t.add_argument("--held-out", type=int, default=0,
                   help="hold out this many examples (the last ones) for held-out metrics")
    t.add_argument("--steps", type=int, default=200)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--optimizer", default="sgd", help=", ".join(OPTIMIZERS))
    t.add_argument("--lr", default="0.1", help="a rate, or comma-separated rates (a grid)")
    t.add_argument("--record-every", type=int, default=10)
    t.add_argument("--seeds", type=int, default=2)
    t.add_argument("--key", type=int, default=0)
    t.add_argument("--metrics", default=None,
                   help="comma-separated analyze metrics, or 'none' (default: all single-batch "
                        "ones and similar_batch_correlation)")
    t.add_argument("--lambda-max", action="store_true", help="also record lambda_max")
    t.add_argument("--out", default=None, help="save the TrainResult to this .npz")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(run=run)


def run(args) -> int:
    try:
        rates = [float(v) for v in args.lr.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--lr {args.lr!r}: expected a number or comma-separated numbers")
    metrics = None
    if args.metrics is not None:
        names = [m.strip() for m in args.metrics.split(",") if m.strip()]
        metrics = () if names == ["none"] else tuple(names)
    images, labels = _load_data(args.data)
    rng = np.random.default_rng(args.key)
    order = rng.permutation(len(labels))  # digits and MNIST come sorted by class in parts
    images, labels = images[order], labels[order]
    held = None
    if args.held_out:
        if not 0 < args.held_out < len(labels):
            raise ValueError(f"--held-out {args.held_out}: must be in [1, {len(labels) - 1}]")
        held = (images[-args.held_out:], labels[-args.held_out:])
        images, labels = images[:-args.held_out], labels[:-args.held_out]
    model = build_model(args)
    t0 = time.perf_counter()
    res = train(model, (images, labels), steps=args.steps, batch_size=args.batch_size,
                optimizer=args.optimizer, learning_rate=rates if len(rates) > 1 else rates[0],
                record_every=args.record_every, seeds=args.seeds, key=args.key, held_out=held,
                record_lambda_max=args.lambda_max, progress=not args.no_progress,
                metrics=metrics, similar_batch_noise=None if metrics is not None else 0.1)
    print(f"{type(model).__name__} norm={args.norm} data={args.data} ({len(labels)} train) "
          f"{args.optimizer} lr={args.lr} steps={args.steps}: {time.perf_counter() - t0:.1f} s")
    print(_summary(res))
    if args.out:
        print(f"wrote {res.save(args.out)}")
    return 0


def _summary(res: TrainResult) -> str:
    """One line per record: mean over seeds (per rate) of the losses and the last layer's
    cosine similarity."""
    cols = [c for c in ("train_loss", "train_accuracy", "held_out_loss", "held_out_accuracy",
                        "gradient_cosine_min", "lambda_max") if c in res]
    rates = res.rates if res.rates is not None else [None]
    lines = []
    for ri, rate in enumerate(rates):
        pick = (lambda a: np.asarray(a)[:, ri]) if rate is not None else np.asarray
        if rate is not None:
            lines.append(f"learning rate {rate:g}")
        head = f"{'step':>6}" + "".join(f"{c:>20}" for c in cols)
        if "cosine_similarity" in res:
            head += f"{'final cosine':>14}"
        lines.append(head)
        for i, s in enumerate(res.step):
            row = f"{s:>6}" + "".join(f"{np.nanmean(pick(res[c])[:, i]):>20.4g}" for c in cols)
            if "cosine_similarity" in res:
                row += f"{np.nanmean(pick(res['cosine_similarity'])[:, i, -1]):>14.4f}"
            lines.append(row)
    return "\n".join(lines)
