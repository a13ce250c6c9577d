"""``sigprop normalizers``: list the normalizer names."""

from __future__ import annotations

from sigprop.nn import normalizers


def register(sub) -> None:
    sub.add_parser("normalizers", help="list the normalizer names").set_defaults(run=run)


def run(args) -> int:
    del args
    print("\n".join(normalizers.names()))
    return 0
