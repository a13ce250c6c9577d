"""``sigprop quickstart``: cfg_10 x normalizers, a table and ``figures/quickstart.png``."""

from __future__ import annotations


def register(sub) -> None:
    q = sub.add_parser("quickstart", help="cfg_10 x normalizers: a table and figures/quickstart.png")
    q.add_argument("--norms", default=None, help="comma-separated normalizers")
    q.add_argument("--seeds", type=int, default=3)
    q.add_argument("--batch", type=int, default=32)
    q.add_argument("--out", default="figures/quickstart.png")
    q.set_defaults(run=run)


def run(args) -> int:
    from sigprop.paper import quickstart  # the paper room loads only for this command

    norms = tuple(args.norms.split(",")) if args.norms else quickstart.DEFAULT_NORMS
    quickstart.run(norms, seeds=args.seeds, batch=args.batch, out=args.out)
    return 0
