"""``sigprop figures``: regenerate the gallery (the options are the figure scripts' own)."""

from __future__ import annotations


def register(sub) -> None:
    from sigprop.paper import figures

    figures.parser(sub=sub).set_defaults(run=figures.cli_main)
