"""The ``sigprop`` command line: ``sigprop quickstart``, ``sigprop analyze``, ``sigprop sweep``,
``sigprop validate``, ``sigprop figures``, ``sigprop hessian``, ``sigprop train``,
``sigprop normalizers``. One module per command, each with ``register(subparsers)``; the
commands' work is the library's."""

from __future__ import annotations

import argparse
import sys

from sigprop.backend import cpu
from sigprop.cli import (
    analyze,
    figures,
    hessian,
    normalizers,
    quickstart,
    sweep,
    train,
    validate,
)

COMMANDS = (quickstart, analyze, normalizers, sweep, validate, figures, hessian, train)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sigprop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    args = parser.parse_args(argv)
    cpu.fast_start()
    try:
        return args.run(args)
    except ValueError as e:  # bad input: a clear message, not a traceback
        print(f"sigprop: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
