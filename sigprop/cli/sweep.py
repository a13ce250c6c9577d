"""``sigprop sweep``: a grid of zoo configs from comma-separated lists, one file per point,
resumable; on a local or existing Dask cluster with ``--workers`` / ``--scheduler``."""

from __future__ import annotations

from sigprop.cli.common import ints

_GROUPED = ("groupnorm", "evonorm_s0")  # the normalizers taking group_size


def register(sub) -> None:
    s = sub.add_parser(
        "sweep", help="a grid of configs (comma-separated lists); one file per point, resumable",
        description="Analyse every combination of the comma-separated values; print final-layer "
                    "metrics per point. With --out, each finished point is saved there at once "
                    "and a rerun skips finished points (read them with sigprop.load_sweep).")
    s.add_argument("--model", choices=["mlp", "cnn", "resnet56", "wrn"], default="cnn")
    s.add_argument("--cfg", default=None,
                   help="cnn: cfg_10, cfg_20, cfg_40 or uniform (default: uniform with --depth)")
    s.add_argument("--norm", default="batchnorm", help="comma-separated normalizers")
    s.add_argument("--depth", type=ints, default=None,
                   help="comma-separated depths (mlp: 10, uniform cnn, wrn: 26)")
    s.add_argument("--width", type=ints, default=None,
                   help="comma-separated widths (mlp: 256, uniform cnn: 64) or k (wrn: 2)")
    s.add_argument("--group-size", type=ints, default=None,
                   help="comma-separated group sizes for groupnorm / evonorm_s0 (the other "
                        "normalizers run once, without)")
    s.add_argument("--batch", type=ints, default=[64], help="comma-separated batch sizes")
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
    s.set_defaults(run=run)


def sweep_model(model, norm, batch, classes, cfg=None, depth=None, width=None, group_size=None,
                 image=None):
    """The CLI's sweep builder; ``batch`` and ``image`` shape the inputs, not the model."""
    from sigprop import nn as models

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


def sweep_inputs(config: dict) -> tuple[int, ...]:
    """mlp: ``[batch, width]`` (as ``sigprop analyze``); conv nets: ``[batch, image, image, 3]``."""
    if config["model"] == "mlp":
        return (config["batch"], config["width"])
    return (config["batch"], config["image"], config["image"], 3)


def _grid(args) -> list[dict]:
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


def _executor(args):
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
        from sigprop.sweeps import executors as cluster

        return cluster.local_cluster(args.workers)
    if args.scheduler is not None:
        from sigprop.sweeps import executors as cluster

        client = cluster.connect(args.scheduler)
        return contextlib.closing(client)
    return contextlib.nullcontext()


def run(args) -> int:
    from sigprop.paper.quickstart import summarize
    from sigprop.sweeps.sweep import sweep

    grid = _grid(args)
    with _executor(args) as executor:
        points = sweep(sweep_model, grid, sweep_inputs, seeds=args.seeds, out=args.out,
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
