"""The ``sigprop`` command line: ``sigprop quickstart``, ``sigprop analyze``, ``sigprop sweep``,
``sigprop validate``, ``sigprop figures``, ``sigprop hessian``, ``sigprop train``,
``sigprop normalizers``."""

from __future__ import annotations

import argparse
import os
import sys


def add_model_args(p, *, model: str, norm: str) -> None:
    """The zoo-model options :func:`_build_model` reads (``--model``, ``--cfg``, ``--norm``,
    sizes, normalizer options, resnet flags), shared by ``analyze``, ``hessian`` and ``train``."""
    p.add_argument("--model", choices=["mlp", "cnn", "resnet56", "wrn"], default=model)
    p.add_argument("--cfg", default="cfg_10", help="cnn: cfg_10, cfg_20, cfg_40 or uniform")
    p.add_argument("--norm", default=norm)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--width", type=int, default=None, help="width (mlp, uniform cnn) or k (wrn)")
    p.add_argument("--group-size", type=int, default=None)
    p.add_argument("--num-groups", type=int, default=None)
    p.add_argument("--preact", action="store_true")
    p.add_argument("--skipinit", action="store_true")


def _build_model(args):
    from sigprop import models

    opts = {}
    if args.group_size is not None:
        opts["group_size"] = args.group_size
    if args.num_groups is not None:
        opts["num_groups"] = args.num_groups
    common = dict(norm=args.norm, n_classes=args.classes, **opts)
    if args.model == "mlp":
        return models.mlp(args.depth or 10, args.width or 256, **common)
    if args.model == "cnn":
        if args.cfg == "uniform":
            return models.cnn("uniform", depth=args.depth or 10, width=args.width or 64, **common)
        return models.cnn(args.cfg, **common)
    if args.model == "resnet56":
        return models.resnet56(preact=args.preact, skipinit=args.skipinit, **common)
    return models.wrn(args.depth or 26, args.width or 2, **common)


def _fast_start() -> None:
    """CLI runs are compile-bound: XLA:CPU's -O1 backend compiles ~2x faster than -O2 for ~15%
    slower kernels, and a persistent cache makes a second run start at once. Both only where
    the user has not chosen (``XLA_FLAGS``, ``JAX_COMPILATION_CACHE_DIR``); set before JAX
    initializes its backend."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=1").strip()
    import jax

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        cache = os.path.join(os.path.expanduser("~"), ".cache", "sigprop", "xla")
        try:
            os.makedirs(cache, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        except OSError:  # read-only home: run without the cache
            pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sigprop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="cfg_10 x normalizers: a table and figures/quickstart.png")
    q.add_argument("--norms", default=None, help="comma-separated normalizers")
    q.add_argument("--seeds", type=int, default=3)
    q.add_argument("--batch", type=int, default=32)
    q.add_argument("--out", default="figures/quickstart.png")

    a = sub.add_parser("analyze", help="analyse one model; print final-layer metrics, save .npz")
    add_model_args(a, model="cnn", norm="batchnorm")
    a.add_argument("--classes", type=int, default=100)
    a.add_argument("--batch", type=int, default=64)
    a.add_argument("--image", type=int, default=32)
    a.add_argument("--seeds", type=int, default=3)
    a.add_argument("--key", type=int, default=0)
    a.add_argument("--out", default=None, help="save the LayerMetrics to this .npz")

    sub.add_parser("normalizers", help="list the normalizer names")
    _sweep_parser(sub)
    _validate_parser(sub)
    _figures_parser(sub)
    _training_parsers(sub)

    args = parser.parse_args(argv)
    _fast_start()
    try:
        return _dispatch(args)
    except ValueError as e:  # bad input: a clear message, not a traceback
        print(f"sigprop: error: {e}", file=sys.stderr)
        return 2


def _training_parsers(sub) -> None:
    """``sigprop hessian`` and ``sigprop train`` (their parsers live beside their code)."""
    from sigprop import hessian, train

    hessian.cli_parser(sub)
    train.cli_parser(sub)


def _figures_parser(sub) -> None:
    from sigprop import figures

    figures.parser(sub=sub).set_defaults(run=figures.cli_main)


def _dispatch(args) -> int:
    if hasattr(args, "run"):  # subcommands registered with set_defaults(run=...)
        return args.run(args)
    if args.command == "normalizers":
        from sigprop import normalizers

        print("\n".join(normalizers.names()))
        return 0
    if args.command == "quickstart":
        from sigprop import quickstart

        norms = tuple(args.norms.split(",")) if args.norms else quickstart.DEFAULT_NORMS
        quickstart.run(norms, seeds=args.seeds, batch=args.batch, out=args.out)
        return 0
    import numpy as np

    from sigprop.analyze import analyze

    model = _build_model(args)
    shape = (args.batch, args.width or 256) if args.model == "mlp" else (args.batch, args.image, args.image, 3)
    res = analyze(model, shape, seeds=args.seeds, key=args.key)
    print(f"{type(model).__name__} norm={args.norm} inputs={shape} seeds={args.seeds}")
    for metric in res.metric_names:
        v = np.asarray(res[metric])[:, -1]
        print(f"  final {metric:<22} {v.mean():.4g} ± {v.std():.2g}  ({res.names_of(metric)[-1]})")
    if args.out:
        print(f"wrote {res.save(args.out)}")
    return 0


# ------------------------------------------------------------------------------------ sweep
_GROUPED = ("groupnorm", "evonorm_s0")  # the normalizers taking group_size


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers; got {text!r}")


def _sweep_parser(sub) -> None:
    s = sub.add_parser(
        "sweep", help="a grid of configs (comma-separated lists); one file per point, resumable",
        description="Analyse every combination of the comma-separated values; print final-layer "
                    "metrics per point. With --out, each finished point is saved there at once "
                    "and a rerun skips finished points (read them with sigprop.load_sweep).")
    s.add_argument("--model", choices=["mlp", "cnn", "resnet56", "wrn"], default="cnn")
    s.add_argument("--cfg", default=None,
                   help="cnn: cfg_10, cfg_20, cfg_40 or uniform (default: uniform with --depth)")
    s.add_argument("--norm", default="batchnorm", help="comma-separated normalizers")
    s.add_argument("--depth", type=_ints, default=None,
                   help="comma-separated depths (mlp: 10, uniform cnn, wrn: 26)")
    s.add_argument("--width", type=_ints, default=None,
                   help="comma-separated widths (mlp: 256, uniform cnn: 64) or k (wrn: 2)")
    s.add_argument("--group-size", type=_ints, default=None,
                   help="comma-separated group sizes for groupnorm / evonorm_s0 (the other "
                        "normalizers run once, without)")
    s.add_argument("--batch", type=_ints, default=[64], help="comma-separated batch sizes")
    s.add_argument("--image", type=int, default=32)
    s.add_argument("--classes", type=int, default=100)
    s.add_argument("--seeds", type=int, default=3)
    s.add_argument("--key", type=int, default=0)
    s.add_argument("--out", default=None, help="folder: one .npz per finished point; resumes")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--workers", type=int, default=None,
                   help="run the units on a local Dask cluster of N worker processes (one "
                        "device and one thread each; needs sigprop[cluster])")
    s.add_argument("--scheduler", default=None,
                   help="run the units on an existing Dask cluster: its scheduler's address, "
                        "e.g. tcp://host:8786 (workers must see --out)")
    s.set_defaults(run=_cmd_sweep)


def _sweep_model(model, norm, batch, classes, cfg=None, depth=None, width=None, group_size=None,
                 image=None):
    """The CLI's sweep builder; ``batch`` and ``image`` shape the inputs, not the model."""
    from sigprop import models

    del batch, image
    common = dict(norm=norm, n_classes=classes)
    if group_size is not None:
        common["group_size"] = group_size
    if model == "mlp":
        return models.mlp(depth, width, **common)
    if model == "cnn":
        size = {k: v for k, v in (("depth", depth), ("width", width)) if v is not None}
        return models.cnn(cfg, **size, **common)
    if model == "resnet56":
        return models.resnet56(**common)
    return models.wrn(depth, width, **common)


def _sweep_inputs(config: dict) -> tuple[int, ...]:
    """mlp: ``[batch, width]`` (as ``sigprop analyze``); conv nets: ``[batch, image, image, 3]``."""
    if config["model"] == "mlp":
        return (config["batch"], config["width"])
    return (config["batch"], config["image"], config["image"], 3)


def _sweep_grid(args) -> list[dict]:
    """The points of ``sigprop sweep``, norm outermost, then depth, width, group size, batch.

    ``--group-size`` is an axis of the grouped normalizers only: ``--norm batchnorm,groupnorm
    --group-size 4,8`` is three points (batchnorm; groupnorm with 4; groupnorm with 8), since a
    group size means nothing to batchnorm (and its builder rejects one)."""
    import itertools

    norms = [n.strip() for n in args.norm.split(",") if n.strip()]
    if not norms:
        raise ValueError("--norm: give at least one normalizer")
    for flag in ("depth", "width", "group_size", "batch"):
        values = getattr(args, flag)
        if values is not None and not values:
            raise ValueError(f"--{flag.replace('_', '-')}: give at least one value")
    depth, width, cfg = args.depth, args.width, None
    if args.model == "mlp":
        depth, width = depth or [10], width or [256]
    elif args.model == "cnn":
        cfg = args.cfg or ("uniform" if depth else "cfg_10")
        if cfg == "uniform":
            width = width or [64]
        elif depth or width:
            raise ValueError(f"--depth/--width are for --cfg uniform; {cfg} has fixed layers")
    elif args.model == "resnet56":
        if depth or width:
            raise ValueError("--depth/--width: resnet56 has a fixed depth and widths; "
                             "use --model wrn for other sizes")
    else:
        depth, width = depth or [26], width or [2]
    if args.cfg is not None and args.model != "cnn":
        raise ValueError(f"--cfg is for --model cnn, not {args.model}")
    sizes = args.group_size
    if sizes and not any(n.lower() in _GROUPED for n in norms):
        raise ValueError(f"--group-size applies to {', '.join(_GROUPED)}; --norm {args.norm} "
                         "has none of them")
    points = []
    for norm in norms:
        groups = sizes if (sizes and norm.lower() in _GROUPED) else [None]
        for d, w, g, b in itertools.product(depth or [None], width or [None], groups, args.batch):
            config = dict(model=args.model, cfg=cfg, norm=norm, depth=d, width=w, group_size=g,
                          batch=b, image=None if args.model == "mlp" else args.image,
                          classes=args.classes)
            points.append({k: v for k, v in config.items() if v is not None})
    return points


def _sweep_executor(args):
    """The executor of ``--workers N`` (a local Dask cluster) or ``--scheduler ADDRESS`` (an
    existing one), closed on exit; a null context without either."""
    import contextlib

    if args.workers is not None and args.scheduler is not None:
        raise ValueError("--workers starts a local cluster, --scheduler uses an existing one: "
                         "pass one of them")
    if args.workers is not None:
        if args.workers < 1:
            raise ValueError(f"--workers {args.workers}: expected a number of worker "
                             "processes >= 1")
        from sigprop import cluster

        return cluster.local_cluster(args.workers)
    if args.scheduler is not None:
        from sigprop import cluster

        client = cluster.connect(args.scheduler)
        return contextlib.closing(client)
    return contextlib.nullcontext()


def _cmd_sweep(args) -> int:
    from sigprop.quickstart import summarize
    from sigprop.sweep import sweep

    grid = _sweep_grid(args)
    with _sweep_executor(args) as executor:
        points = sweep(_sweep_model, grid, _sweep_inputs, seeds=args.seeds, out=args.out,
                       key=args.key, progress=not args.no_progress, executor=executor)
    configs = [p.config for p in points]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    cols = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1] or ["norm"]
    head = "".join(f"{k:<12}" for k in cols) + f"{'final cosine':>16}{'grad first/last':>20}"
    print(f"sigprop sweep: {len(points)} points, {args.seeds} seeds (mean ± std over seeds)")
    print(head)
    print("-" * len(head))
    for p in points:
        (row,) = summarize({"": p.metrics})
        print("".join(f"{str(p.config.get(k, '-')):<12}" for k in cols)
              + f"{row['cosine']:>9.3f} ± {row['cosine_std']:.3f}"
              + f"{row['grad_ratio']:>13.3g} ± {row['grad_ratio_std']:.2g}")
    if args.out:
        print(f"saved in {args.out}/ (one .npz per point; sigprop.load_sweep({args.out!r}))")
    return 0


# ------------------------------------------------------------------------------------ validate


def _validate_parser(sub) -> None:
    v = sub.add_parser("validate", help="re-run the papers' claims 1-12; PASS/FAIL table")
    v.add_argument("--quick", action="store_true",
                   help="small sizes (minutes on a CPU); default: the papers' sizes")
    v.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    v.add_argument("--claims", type=_ints, default=None,
                   help="comma-separated claim ids (default: all, 1-12)")
    v.set_defaults(run=_cmd_validate)


def _cmd_validate(args) -> int:
    import importlib

    validate = importlib.import_module("sigprop.validate")  # the module; sigprop.validate is
    # the function

    claims = tuple(args.claims) if args.claims else validate.CLAIMS
    results = validate.validate(quick=args.quick, claims=claims)
    print(validate.format_table(results))
    if args.json:
        validate.write_json(results, args.json, args.quick)
        print(f"wrote {args.json}")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
