"""``sigprop validate``: re-run the papers' claims; a PASS / FAIL / INCONCLUSIVE table, optionally
JSON."""

from __future__ import annotations

from sigprop.cli.common import ints


def register(sub) -> None:
    v = sub.add_parser("validate", help="re-run the papers' claims 1-19; PASS / FAIL / "
                                        "INCONCLUSIVE table (exit 0 only if all pass)")
    v.add_argument("--quick", action="store_true",
                   help="small sizes (minutes on a CPU); default: the papers' sizes")
    v.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    v.add_argument("--claims", type=ints, default=None,
                   help="comma-separated claim ids (default: all, 1-19)")
    v.set_defaults(run=run)


def run(args) -> int:
    from sigprop.paper import validate

    claims = tuple(args.claims) if args.claims else validate.CLAIMS
    results = validate.validate(quick=args.quick, claims=claims)
    print(validate.format_table(results))
    if args.json:
        validate.write_json(results, args.json, args.quick)
        print(f"wrote {args.json}")
    return 0 if all(r.passed for r in results) else 1
