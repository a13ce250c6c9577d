"""Wide-network closed forms (claims 9, 10): the ReLU arc-cosine map and BatchNorm's gradient
explosion rate, measured beside the theory."""

from __future__ import annotations

import jax
import numpy as np

from sigprop import nn as models
from sigprop.analyses import theory
from sigprop.paper.experiments import Experiment, register


def arccos_inputs(s) -> np.ndarray:
    """The one N(0, 1) batch every seed sees (the theory is iterated from its pair cosines)."""
    return np.asarray(jax.random.normal(jax.random.key(9), (s.arccos_batch, s.wide)))


def arccos_theory(x: np.ndarray, depth: int) -> np.ndarray:
    """Mean off-diagonal cosine after each layer: the arc-cosine map applied to every input
    pair's cosine, ``depth`` times (layer 1 ... depth)."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    pairs = (xn @ xn.T)[~np.eye(len(x), dtype=bool)]
    return theory.iterate(theory.relu_correlation_map, np.clip(pairs, -1, 1),
                          depth)[1:].mean(axis=1)


def _measure(r) -> None:
    s = r.s
    x = arccos_inputs(s)
    r.analyze("arccos", models.mlp(s.arccos_depth, s.wide, norm="none"), x,
              seeds=s.arccos_seeds,
              metrics=("cosine_similarity", "activation_variance", "channel_squared_mean"))
    r.put("theory/arccos_cosine", arccos_theory(x, s.arccos_depth))
    r.analyze("bn_mlp", models.mlp(s.bn_depth, s.wide, norm="batchnorm"), (s.bn_batch, s.wide),
              metrics=("grad_norm",))
    r.put("theory/bn_rate", theory.bn_gradient_explosion_rate("relu"))


CLOSED_FORMS = register(Experiment(
    "closed_forms", "Wide ReLU MLPs beside their closed forms (claims 9, 10)",
    quick=dict(seeds=3, wide=1024, arccos_depth=10, arccos_batch=32, arccos_seeds=16,
               bn_depth=16, bn_batch=64),
    full=dict(seeds=8, wide=2048, arccos_depth=20, arccos_batch=64, arccos_seeds=16,
              bn_depth=32, bn_batch=256),
    measure=_measure, points=lambda s: 2,
    inputs=lambda s: f"N(0, 1) inputs: one batch of {s.arccos_batch} for the arc-cosine map, "
                     f"batch {s.bn_batch} per seed for BatchNorm"))
