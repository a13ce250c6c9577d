"""A model's training objective as a function of its parameters, for any model ``analyze`` takes.

``analyze`` differentiates the loss with respect to zero probes at the taps; the Hessian
(:mod:`sigprop.hessian`) and training (:mod:`sigprop.train`) differentiate it with respect to
the parameters. :func:`objective` turns a zoo model, a linen module, an nnx instance or an
``rngs -> nnx.Module`` factory into an :class:`Objective`: ``split`` a network's variables
into ``(params, rest)`` and evaluate ``loss(params, rest, x, target)``, where ``rest`` holds the
other collections (BatchNorm's ``batch_stats``, lazy kernel keys).

Batch-statistics layers run in train mode, as in ``analyze``: the loss of a batch uses that
batch's own statistics, inside every derivative (a Hessian-vector product differentiates through
the batch mean and variance). The running averages are updated in the returned ``rest`` and
never used.

Seed ``i``'s weights are the ones ``analyze(model, inputs, seeds=n, key=key)`` measures for seed
``i`` (the same key splits), so a Hessian or a training run starts from the analysed network.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sigprop.core.args import check_apply_kwargs, check_inputs, given_variables, network
from sigprop.core.plan import Plan, loss_value
from sigprop.util.checks import check_seeds
from sigprop.util.keys import init_key


@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
    """``loss(params, rest, x, target)`` of one network; see the module doc.

    ``target``: integer labels ``[batch]`` (softmax cross-entropy against them) or a key (the
    model's ``loss(outputs, key)``, default cross-entropy against labels drawn with the key, as
    in ``analyze``)."""

    net: Any  # adapters.LinenNet | adapters.NnxNet
    loss_fn: Callable | None = None
    given: Any = None  # variables with a leading seed axis, or None (each seed initializes)
    extra_terms: bool = True  # add the model's extra loss terms (RegNorm's penalty) to loss

    def init(self, key, x):
        """Variables of the network seed ``key`` builds (the key ``analyze`` gives the seed)."""
        return self.net.init_weights(init_key(key), x)

    def variables(self, keys, x):
        """Variables for every seed key (leading seed axis): initialized, or the given ones."""
        if self.given is not None:
            return self.given
        return jax.vmap(lambda k: self.init(k, x))(keys)

    def split(self, variables):
        """``(params, rest)``: the trainable parameters and every other collection."""
        return self.net.split(variables)

    def apply(self, params, rest, x):
        """``(outputs, new rest, extra loss terms)`` of one train-mode forward pass."""
        return self.net.apply_train(params, rest, x)

    def loss(self, params, rest, x, target):
        """``(scalar loss, (outputs, new rest))`` on the batch ``x`` (with the model's extra
        loss terms unless ``extra_terms=False``)."""
        out, new_rest, extra = self.apply(params, rest, x)
        value = self.output_loss(out, target)
        return (value + extra if self.extra_terms else value), (out, new_rest)

    def output_loss(self, outputs, target):
        """The loss as a function of the model's outputs alone (without the extra loss terms
        a model may add): ``loss_fn(outputs, key)`` for a key ``target``, else mean softmax
        cross-entropy against the integer labels ``target``."""
        if _is_key(target):
            plan = Plan((), loss=self.loss_fn)
            return loss_value(plan, outputs, target, ())
        return optax.softmax_cross_entropy_with_integer_labels(
            outputs.reshape(-1, outputs.shape[-1]), jnp.reshape(target, (-1,))).mean()


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def objective(model, inputs, *, seeds: int = 1, variables=None, loss=None,
              apply_kwargs=None) -> tuple[Objective, tuple, Any, Any]:
    """``(Objective, shape, dtype, x)`` for ``model`` on ``inputs`` (a shape or an array, as in
    ``analyze``; ``x`` is None for a shape). ``variables``: linen weights (with or without a
    leading seed axis); an nnx instance uses its own weights (``seeds=1``)."""
    seeds = check_seeds(seeds)
    kw = check_apply_kwargs(apply_kwargs)
    shape, dtype, x = check_inputs(model, inputs)
    x_abstract = jax.ShapeDtypeStruct(shape, dtype)
    net, own_state = network(model, x_abstract, None, kw)
    given = given_variables(net, own_state, variables, seeds, x_abstract)
    if given is not None and own_state is None:
        given = net.without_taps(given)
    return Objective(net, loss, given), shape, dtype, x


# ------------------------------------------------------------------------------ param paths


def param_paths(params) -> list[str]:
    """Every parameter leaf's path, ``/``-joined (``"Dense_0/kernel"``, ``"layers/0/bias"``)."""
    return [_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _path_str(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(p for p in parts if p != "value")


def param_mask(params, pattern) -> Any:
    """A pytree of bools over ``params``: leaves whose path matches ``pattern`` (a glob such as
    ``"stage1/*"`` or ``"*norm*/scale"``, a tuple of globs, or a predicate ``path -> bool``);
    ``None`` selects all. A pattern that matches nothing is a ValueError listing the paths."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    paths = [_path_str(p) for p, _ in leaves]
    if pattern is None:
        hits = [True] * len(paths)
    elif callable(pattern):
        hits = [bool(pattern(p)) for p in paths]
    else:
        pats = (pattern,) if isinstance(pattern, str) else tuple(pattern)
        if not pats or not all(isinstance(p, str) for p in pats):
            raise ValueError(f"params={pattern!r}: a glob, a tuple of globs, a predicate "
                             "path -> bool, or None")
        hits = [any(fnmatch.fnmatchcase(p, q) or fnmatch.fnmatchcase(p, q + "/*")
                    for q in pats) for p in paths]
    if not any(hits):
        shown = ", ".join(paths[:40]) + (", ..." if len(paths) > 40 else "")
        raise ValueError(f"params={pattern!r} matches no parameter; the parameter paths are: "
                         f"{shown}")
    return jax.tree_util.tree_unflatten(tree, hits)


def count(params, mask=None) -> int:
    """Number of scalar parameters (those selected by ``mask``)."""
    leaves = jax.tree_util.tree_leaves(params)
    flags = [True] * len(leaves) if mask is None else jax.tree_util.tree_leaves(mask)
    return int(sum(np.prod(np.shape(a)) for a, f in zip(leaves, flags) if f))
