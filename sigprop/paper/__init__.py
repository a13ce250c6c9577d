"""The papers' claims and figures as code: one definition per experiment
(:mod:`~sigprop.paper.experiments`), the figures drawn from them (:mod:`~sigprop.paper.figures`),
``sigprop validate`` (:mod:`~sigprop.paper.validate`), plotting helpers and the quickstart.
Loaded on demand: ``import sigprop`` does not import this package."""
