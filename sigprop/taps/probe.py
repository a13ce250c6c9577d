"""Taps: the one place where activations and gradients are observed (flax linen side).

What taps do is chosen explicitly by the engine's ``apply`` call, never by state read at trace
time: an activation tap records what the *mutable* collections ask for, a gradient tap reports
through whichever probe collection the variables hold.

- ``sigprop_moments`` mutable: :func:`sigprop.metrics.record_moments` (``[3]``) under ``"m"``.
- ``sigprop_gram`` mutable: the ``B x B`` Gram record ``(hi, lo)`` under ``"h"``, ``"l"``.
- ``sigprop_pair`` mutable: under ``jax.vmap(..., axis_name=PAIR_AXIS)`` over two batches, the
  activation's Pearson correlation between them, under ``"c"``.
- ``sigprop_branch`` mutable: a residual branch's ``[variance, finite]`` under ``"r"``.
- a gradient tap is an identity with a custom VJP and a zero ``[2]`` variable ``"g"``: in the
  ``probes`` collection its backward rule returns ``[||g||_F, finite(g)]`` as the cotangent of
  the variable (so ``jax.grad`` w.r.t. the collection gives every layer's gradient norm in one
  backward pass, two numbers per layer); in ``pair_probes`` (under the pair vmap) it returns
  ``[correlation of the two batches' gradients, finite]``; with neither it is the identity.
  ``model.init`` declares the variable in ``probes``.
- a normalizer's gradient-noise tap (:func:`observe_norm`, on LayerNorm / RMSNorm outputs
  ``y = gamma x_hat + beta``) is an identity with a custom VJP and a zero ``[4]`` variable
  ``"n"`` in ``probes``: its backward rule returns :func:`sigprop.metrics.record_gns` of
  ``d loss / d y`` and ``x_hat`` (per-example gradients of the affine parameters, contracted)
  as the variable's cotangent, in the same backward pass.

Nothing mutable and no probes: every tap is the identity (the bare network, for benchmarks).

Names: a tap's layer name is the path of the module holding it, joined by ``/``. A module whose
name contains a ``str.format`` field, optionally followed by ``+start`` (e.g. ``"block{}+1"``),
is an ``nn.scan`` stack: its variables have a leading layer axis, and :func:`unstack` expands it
into ``block1``, ``block2``, ... The same rule turns scanned params into the unrolled layout.
Layer names are ordered by call order (:func:`collect`'s ``order``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from sigprop import metrics
from sigprop.taps.collections import (  # noqa: F401 (taps' names, re-exported)
    ATTENTION,
    ATTENTION_KEY,
    ATTENTION_LOGITS,
    BRANCH,
    BRANCH_KEY,
    GNS_KEY,
    GRAD_KEY,
    GRAM,
    HI_KEY,
    KERNEL_KEYS,
    KEY_COLLECTIONS,
    LO_KEY,
    LOGITS_KEY,
    LOSSES,
    MAX_ABS,
    MAX_ABS_KEY,
    MOMENTS,
    MOMENTS_KEY,
    NEED_COLLECTIONS,
    PAIR,
    PAIR_AXIS,
    PAIR_KEY,
    PAIR_PROBES,
    PARAM_KEY,
    PROBES,
    SOWN,
    TAP_COLLECTIONS,
    TOKEN,
    TOKEN_HI_KEY,
    TOKEN_LO_KEY,
    WEIGHT_NAMES,
)


@jax.custom_vjp
def _grad_probe(x, probe):
    del probe
    return x


def _grad_probe_fwd(x, probe):
    del probe
    return x, None


def _grad_probe_bwd(_, g):
    norm = metrics.grad_norm(g)  # finite exactly when g is (and its norm fits in float32)
    return g, jnp.stack([norm, metrics.all_finite(norm)])


_grad_probe.defvjp(_grad_probe_fwd, _grad_probe_bwd)


@jax.custom_vjp
def _pair_grad_probe(x, probe):
    del probe
    return x


def _pair_grad_probe_bwd(_, g):
    """Under ``vmap(axis_name=PAIR_AXIS)`` over two batches: the correlation of the two
    batches' gradients at this layer (and whether this batch's gradient is finite)."""
    both = jax.lax.all_gather(g, PAIR_AXIS)
    return g, jnp.stack([metrics.correlation(both[0], both[1]), metrics.all_finite(g)])


_pair_grad_probe.defvjp(_grad_probe_fwd, _pair_grad_probe_bwd)


def grad_probe(x, probe, pair: bool = False):
    """The gradient tap as a function: identity on ``x``; the cotangent of ``probe [2]`` is
    ``[||d loss / d x||, finite]`` (or, ``pair``, the two batches' gradient correlation)."""
    return _pair_grad_probe(x, probe) if pair else _grad_probe(x, probe)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _norm_probe(y, x_hat, probe, scale, bias):
    del x_hat, probe
    return y


def _norm_probe_fwd(y, x_hat, probe, scale, bias):
    del probe
    return y, x_hat


def _norm_probe_bwd(scale, bias, x_hat, g):
    return g, jnp.zeros_like(x_hat), metrics.record_gns(g, x_hat, scale, bias)


_norm_probe.defvjp(_norm_probe_fwd, _norm_probe_bwd)


def norm_probe(y, x_hat, probe, scale: bool = True, bias: bool = True):
    """A normalizer's gradient-noise tap as a function: identity on its output ``y = gamma x_hat
    + beta``; the cotangent of ``probe [4]`` is :func:`sigprop.metrics.record_gns` of ``d loss /
    d y`` and ``x_hat`` (``scale`` / ``bias``: which affine parameters the normalizer has). The
    cotangent of ``x_hat`` is zero: it reaches the loss through ``y`` only."""
    return _norm_probe(y, x_hat, probe, scale, bias)


def observe_norm(module: nn.Module, y, x_hat, *, scale: bool = True, bias: bool = True,
                 active: bool = True):
    """The per-example affine-gradient tap of a normalizer ``module`` whose output is ``y =
    gamma x_hat + beta`` (:mod:`sigprop.metrics.gns`): ``model.init`` declares its zero ``[4]``
    probe in ``probes`` (key ``"n"``); in apply, ``active`` and the probe present, ``y`` passes
    through :func:`norm_probe`. Returns ``y``."""
    if module.is_initializing():
        module.variable(PROBES, GNS_KEY, jnp.zeros, (4,), jnp.float32)
        return y
    if active and module.has_variable(PROBES, GNS_KEY):
        if y.shape[0] < 2:
            raise ValueError(f"metrics=: the gns_* metrics need a batch of at least 2 examples "
                             f"(per-example gradients); got batch {y.shape[0]} at "
                             f"{'/'.join(module.path)!r}")
        return norm_probe(y, x_hat, module.get_variable(PROBES, GNS_KEY), scale, bias)
    return y


def record_activation(x, needs, pair_axis: str | None = PAIR_AXIS, where: str = "") -> dict:
    """``{leaf key: record}`` of one activation for the metric ``needs`` (``where``: the tap's
    name, for errors)."""
    x = jax.lax.stop_gradient(x)
    out = {}
    if metrics.MOMENTS in needs:
        out[MOMENTS_KEY] = metrics.record_moments(x)
    if metrics.GRAM in needs:
        out[HI_KEY], out[LO_KEY] = metrics.record_gram(x)
    if metrics.TOKEN in needs:
        metrics.check_tokens(x, where, metrics.TOKEN_METRICS)
        out[TOKEN_HI_KEY], out[TOKEN_LO_KEY] = metrics.record_token_gram(x)
    if metrics.MAX_ABS in needs:
        out[MAX_ABS_KEY] = metrics.record_max_abs(x)
    if metrics.PAIR in needs:
        both = jax.lax.all_gather(x, pair_axis)
        out[PAIR_KEY] = metrics.correlation(both[0], both[1])
    return out


def record_attention(probs, logits, mask, needs, where: str = "") -> dict:
    """``{leaf key: record}`` of one attention tap: ``probs [..., Tq, Tk]``, the scaled scores
    ``logits`` before masking (or None) and ``mask`` (True where a key may be attended to,
    broadcastable to ``probs``; None: every key with a nonzero probability)."""
    out = {}
    if metrics.ATTENTION in needs:
        out[ATTENTION_KEY] = metrics.record_attention(probs, mask)
    if metrics.ATTENTION_LOGITS in needs:
        if logits is None:
            raise ValueError(f"metrics=: attention_logit_max needs the attention logits, and the "
                             f"attention tap {where!r} gives only probabilities; pass them: "
                             "sigprop.tap(self, probs, 'attention', logits=logits, mask=mask)")
        out[LOGITS_KEY] = metrics.record_attention_logits(logits, mask)
    return out


def weight_grad_norms(grads, stack_axes: int = 0):
    """Replace every weight (:data:`WEIGHT_NAMES`) of a nested gradient dict by ``{PARAM_KEY:
    [||g||_F, finite]}`` per layer (a scanned stack's leading layer axes kept), dropping every
    other leaf: what :func:`collect` gathers into ``param_grad_norm``."""
    out = {}
    for key, sub in grads.items():
        if hasattr(sub, "items"):
            inner = weight_grad_norms(sub, stack_axes + _is_stack(key))
            if inner:
                out[key] = inner
        elif key in WEIGHT_NAMES:
            norm = metrics.grad_norm
            for _ in range(stack_axes):
                norm = jax.vmap(norm)
            value = norm(sub)
            out[PARAM_KEY] = jnp.stack([value, jnp.isfinite(value).astype(jnp.float32)], axis=-1)
    return out


def record_branch(x):
    x = jax.lax.stop_gradient(x).astype(jnp.float32)
    return jnp.stack([metrics.activation_variance(x), metrics.all_finite(x)])


def _recording(module: nn.Module, collection: str) -> bool:
    """The apply call names ``collection`` as mutable (``mutable=True``, a user's own
    ``apply(..., mutable=True)``, asks sigprop's taps for nothing)."""
    return module.scope.mutable is not True and module.is_mutable_collection(collection)


def _sow(module: nn.Module, collection: str, key: str, value) -> None:
    module.sow(collection, key, value, init_fn=lambda: None, reduce_fn=lambda _, v: v)


def observe_act(module: nn.Module, x):
    """Record the activation ``x`` under ``module``'s path (what the mutable tap collections ask
    for); return ``x``."""
    if module.is_initializing():
        return x
    needs = {need for need, col in NEED_COLLECTIONS.items()
             if need in metrics.ACT_NEEDS | {metrics.PAIR} and _recording(module, col)}
    if needs:
        for key, value in record_activation(x, needs, where="/".join(module.path)).items():
            _sow(module, KEY_COLLECTIONS[key], key, value)
    return x


def observe_attention(module: nn.Module, probs, *, logits=None, mask=None):
    """Record an attention's probabilities ``probs [..., Tq, Tk]`` (``attention_entropy``) and,
    given, its scaled scores ``logits`` before masking (``attention_logit_max``) under
    ``module``'s path; ``mask``: True where a key may be attended to (None: the keys with a
    nonzero probability). Returns ``probs``."""
    if module.is_initializing():
        return probs
    needs = {need for need in (metrics.ATTENTION, metrics.ATTENTION_LOGITS)
             if _recording(module, NEED_COLLECTIONS[need])}
    if needs:
        for key, value in record_attention(probs, logits, mask, needs,
                                           "/".join(module.path)).items():
            _sow(module, KEY_COLLECTIONS[key], key, value)
    return probs


def observe_branch(module: nn.Module, x):
    """Record a residual branch's ``[variance, finite]`` under ``module``'s path; return ``x``."""
    if not module.is_initializing() and _recording(module, BRANCH):
        _sow(module, BRANCH, BRANCH_KEY, record_branch(x))
    return x


def observe_grad(module: nn.Module, x):
    """Identity on ``x`` whose backward pass reports ``||d loss / d x||`` under ``module``'s path
    (through the probe collection the variables hold; see the module doc)."""
    if module.is_initializing() or _recording(module, PROBES):
        probe = module.variable(PROBES, GRAD_KEY, jnp.zeros, (2,), jnp.float32)
        return _grad_probe(x, probe.value)
    if module.has_variable(PAIR_PROBES, GRAD_KEY):
        return _pair_grad_probe(x, module.get_variable(PAIR_PROBES, GRAD_KEY))
    if module.has_variable(PROBES, GRAD_KEY):
        return _grad_probe(x, module.get_variable(PROBES, GRAD_KEY))
    return x


KINDS = {"activation": observe_act, "act": observe_act, "gradient": observe_grad,
          "grad": observe_grad, "branch": observe_branch, "attention": observe_attention}


class Tap(nn.Module):
    """A standalone tap: ``Tap('activation', name=...)(x)``, ``Tap('gradient', ...)``,
    ``Tap('branch', ...)`` (a residual branch's output, for ``residual_variance``) or
    ``Tap('attention', ...)(probs, logits=..., mask=...)``."""

    kind: str = "activation"

    @nn.compact
    def __call__(self, x, **attention):
        if self.kind == "attention":
            return observe_attention(self, x, **attention)
        return KINDS[self.kind](self, x)


# --------------------------------------------------------------------------------------------
# Names of scanned stacks


def scan_name(pattern: str, start: int = 0) -> str:
    """The module name of an ``nn.scan`` stack whose layer ``i`` is ``pattern.format(start + i)``."""
    return f"{pattern}+{start}" if start else pattern


def _expand(key: str, i: int) -> str:
    pattern, _, start = key.partition("+")
    return pattern.format(i + int(start or 0))


def _is_stack(key) -> bool:
    return isinstance(key, str) and "{" in key


def unstack(tree: Any) -> Any:
    """Expand every scanned stack in a nested dict into one entry per layer (see module doc)."""
    if not isinstance(tree, dict) and not hasattr(tree, "items"):
        return tree
    out = {}
    for key, sub in tree.items():
        if _is_stack(key):
            length = jax.tree_util.tree_leaves(sub)[0].shape[0]
            for i in range(length):
                out[_expand(key, i)] = unstack(jax.tree_util.tree_map(lambda a, i=i: a[i], sub))
        else:
            out[key] = unstack(sub)
    return out


def restack(tree: Any, like: Any) -> Any:
    """Inverse of :func:`unstack`: gather the per-layer entries of ``tree`` into the stacks of
    ``like`` (a tree in scanned layout)."""
    if not isinstance(like, dict) and not hasattr(like, "items"):
        return tree
    out = {}
    for key, sub in like.items():
        if _is_stack(key):
            length = jax.tree_util.tree_leaves(sub)[0].shape[0]
            parts = [restack(tree[_expand(key, i)], jax.tree_util.tree_map(lambda a: a[0], sub))
                     for i in range(length)]
            out[key] = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *parts)
        else:
            out[key] = restack(tree[key], sub)
    return out


@jax.tree_util.register_pytree_node_class
class LayerValues(Mapping):
    """``{layer name: value}`` stored as runs of layers: each run is one array ``[n, ...]`` whose
    rows belong to ``n`` consecutive names (a scanned stack stays one array). A pytree, so it
    passes through ``jax.vmap`` and ``tree_map`` (indexing by name expects the layer axis first:
    drop a vmapped axis with ``tree_map`` before). :func:`ordered` concatenates runs instead of
    stacking one slice per layer, which keeps trace and compile time flat in depth."""

    def __init__(self, runs):
        self.runs = tuple((tuple(names), value) for names, value in runs)
        self._where = {n: (r, i) for r, (names, _) in enumerate(self.runs)
                       for i, n in enumerate(names)}

    def __getitem__(self, name):
        r, i = self._where[name]
        return self.runs[r][1][i]

    def __iter__(self):
        return iter(self._where)

    def __len__(self):
        return len(self._where)

    def tree_flatten(self):
        return [v for _, v in self.runs], tuple(names for names, _ in self.runs)

    @classmethod
    def tree_unflatten(cls, names, values):
        return cls(zip(names, values))


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if b else a


def _runs(node, leaf_key: str, outer: int, template: tuple, order: Callable) -> list:
    """``[(relative names, array, call index)]`` of the ``leaf_key`` leaves under ``node``;
    each array has the ``outer`` leading axes of the enclosing stacks, then one axis over its
    names. ``order(template path)`` is a tap's call index (stack names unexpanded)."""
    out = []
    for key, sub in node.items():
        path = template + (key,)
        if key == leaf_key and not hasattr(sub, "items"):
            out.append(([""], jnp.expand_dims(sub, outer), order(template)))
        elif hasattr(sub, "items"):
            stack = _is_stack(key)
            inner = sorted(_runs(sub, leaf_key, outer + stack, path, order), key=lambda r: r[2])
            if not stack:
                out += [([_join(key, r) for r in names], v, i) for names, v, i in inner]
                continue
            if not inner:
                continue
            # leaves under a stack: [*outer, n, names, ...]; one run when they can be joined
            first = inner[0][1]
            groups = [inner]
            if any(v.shape[outer + 2:] != first.shape[outer + 2:] or v.dtype != first.dtype
                   for _, v, _ in inner):
                groups = [[run] for run in inner]
            n = first.shape[outer]
            for group in groups:
                v = group[0][1] if len(group) == 1 else jnp.concatenate(
                    [v for _, v, _ in group], axis=outer + 1)
                rel = [r for names, _, _ in group for r in names]
                out.append(([_join(_expand(key, j), r) for j in range(n) for r in rel],
                            v.reshape(v.shape[:outer] + (-1,) + v.shape[outer + 2:]),
                            group[0][2]))
    return out


def collect(tree: Any, leaf_key: str, order: Callable | None = None) -> LayerValues:
    """``{layer name: value}`` of every ``leaf_key`` variable in a collection (scanned stacks are
    expanded into their layers' names, see the module doc), in call order when ``order`` maps
    a tap's module path (a tuple, stacks unexpanded) to its call index, else in the
    collection's order."""
    if not hasattr(tree, "items"):
        return LayerValues([])
    order = order or (lambda path: 0)
    runs = sorted(_runs(tree, leaf_key, 0, (), order), key=lambda r: r[2])
    return LayerValues([(names, v) for names, v, _ in runs])


def stacked(values: LayerValues):
    """The values of every layer as one array ``[layers, ...]`` (runs concatenated), in the
    order of ``values``, or None when there is none."""
    if not values.runs:
        return None
    arrays = [v for _, v in values.runs]
    return arrays[0] if len(arrays) == 1 else jnp.concatenate(arrays)
