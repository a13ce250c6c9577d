"""What one call of the engine computes and how its results are named: the :class:`Plan` (the
metrics, the pair pass's noise, the loss; static: each plan compiles its own program), the loss
of a pass (:func:`loss_value`, default :func:`default_loss`), and :class:`Named`, an array whose
layer axis carries its layer names as pytree metadata (so a cached program returns them too),
with :func:`named`, which gathers a tap collection's records in call order."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from sigprop import metrics
from sigprop.taps import probe

DEFAULT_NOISE = 0.1  # [U]'s s


@jax.tree_util.register_pytree_node_class
class Named:
    """An array whose axis ``axis`` (after any leading item axes) runs over ``names``; the names
    are pytree metadata (they come back from a jitted function, cached or not)."""

    def __init__(self, names, value):
        self.names, self.value = tuple(names), value

    def tree_flatten(self):
        return (self.value,), self.names

    @classmethod
    def tree_unflatten(cls, names, children):
        return cls(names, children[0])


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one call measures (static: each plan compiles its own program).

    ``metrics``: registered metric names; ``noise``: the similar-batch noise scale of the pair
    pass (``None``: no pair pass); ``loss``: ``(outputs, key) -> scalar`` or None (softmax
    cross-entropy against labels drawn with the key)."""

    metrics: tuple
    noise: float | None = None
    loss: Callable | None = None
    optional: tuple = ()  # metrics dropped (not an error) when the model has no tap for them

    @property
    def needs(self) -> frozenset:
        return metrics.needs_of(self.metrics)

    @property
    def act_needs(self) -> frozenset:
        """What the activation, branch and attention taps record in the main pass (moments
        whenever an activation metric is asked for: the layer axis's finite flags)."""
        n = self.needs & (metrics.ACT_NEEDS | {metrics.BRANCH, metrics.ATTENTION,
                                               metrics.ATTENTION_LOGITS})
        if self.needs & (metrics.ACT_NEEDS | {metrics.PAIR}):
            n |= {metrics.MOMENTS}
        return frozenset(n)

    @property
    def backward(self) -> bool:
        """A backward pass to the gradient taps' probes (and the normalizers' gradient-noise
        probes, the same collection)."""
        return bool(self.needs & {metrics.GRAD, metrics.GNS})

    @property
    def gns(self) -> bool:
        """The normalizers' gradient-noise taps active (``gns_*`` metrics)."""
        return metrics.GNS in self.needs

    @property
    def param_backward(self) -> bool:
        """A backward pass to the parameters (``param_grad_norm``), the same pass as the
        probes'."""
        return metrics.PARAM_GRAD in self.needs

    @property
    def pair(self) -> bool:
        return bool(self.needs & {metrics.PAIR, metrics.PAIR_GRAD})


def default_loss(outputs, key):
    """Mean softmax cross-entropy against labels drawn with ``key`` uniformly over the outputs'
    last axis (one label per ``outputs[..., :]`` row)."""
    if not isinstance(outputs, jax.Array):
        raise ValueError("loss: the model returns a "
                         f"{type(outputs).__name__}, not an array of logits; pass loss= "
                         "(outputs, key) -> scalar")
    labels = jax.random.randint(key, outputs.shape[:-1], 0, outputs.shape[-1])
    return optax.softmax_cross_entropy_with_integer_labels(outputs, labels).mean()


def loss_value(plan: Plan, outputs, key, extra):
    """The plan's loss of one pass's ``outputs`` (a float32 scalar), plus the sum of every
    ``extra`` loss term the model sowed."""
    fn = plan.loss or default_loss
    value = fn(outputs, key)
    if jnp.shape(value) != ():
        raise ValueError(f"loss={fn!r} must return a scalar; it returned shape "
                         f"{jnp.shape(value)}")
    value = jnp.asarray(value, jnp.float32)
    return value + sum(jnp.sum(e) for e in jax.tree_util.tree_leaves(extra))


def order_fn(order: tuple):
    """``path -> index`` of a module path (tuple) in ``order`` (unknown paths last)."""
    index = {p: i for i, p in enumerate(order)}
    return lambda path: index.get(tuple(path), len(index))


def named(tree, key, order) -> Named:
    """The ``key`` records of a tap collection as one :class:`Named` ``[layers, ...]`` (value
    None when there is none), in the order ``order`` gives (:func:`order_fn`)."""
    values = probe.collect(tree, key, order)
    return Named(tuple(values), probe.stacked(values))


__all__ = ["DEFAULT_NOISE", "Named", "Plan", "default_loss", "loss_value", "order_fn", "named"]
