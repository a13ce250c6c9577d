"""Taps: the one place where activations and gradients are observed.

- An *activation tap* reduces the activation in hand to :data:`sigprop.metrics.ACT_METRICS` (plus
  a finite flag) on the spot and sows the ``[6]`` vector into the ``'taps'`` collection: no
  activation is kept for metrics.
- A *gradient tap* is an identity with a custom VJP and a zero-valued ``[2]`` variable in the
  ``'probes'`` collection. Its backward rule passes the cotangent through unchanged and returns
  ``[||g||_F, finite(g)]`` as the cotangent of the probe variable, so ``jax.grad`` of the loss
  w.r.t. the ``'probes'`` collection yields every layer's gradient norm in one backward pass,
  without materializing a copy of any gradient. (design.md's zero perturbation would return full
  activation-sized gradients; this returns two numbers per layer.)

Names: a tap's layer name is the path of the module holding it, joined by ``/``. A module whose
name contains a ``str.format`` field, optionally followed by ``+start`` (e.g. ``"block{}+1"``),
is an ``nn.scan`` stack: its variables have a leading layer axis, and :func:`unstack` expands it
into ``block1``, ``block2``, ... The same rule turns scanned params into the unrolled layout.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sigprop import metrics

TAPS = "taps"  # activation metrics, sown
PROBES = "probes"  # gradient probes, differentiated
LOSSES = "losses"  # extra loss terms (RegNorm), sown
N_ACT = len(metrics.ACT_METRICS) + 1  # metrics + finite flag
_ACT_KEY, _GRAD_KEY, _PAIR_KEY = "m", "g", "c"
PAIR_AXIS = "sigprop_pair"  # vmap axis of a pair of batches (similar-batch correlation)

# What taps do while a model is traced: "metrics" (activation taps sow ACT_METRICS + finite
# flag; gradient taps report [||g||, finite]), "pair" (the model runs under
# ``jax.vmap(..., axis_name=PAIR_AXIS)`` over two batches: activation taps sow the correlation of
# the activation between them, gradient taps report [correlation of the gradients, finite]) or
# "off" (every tap is a plain identity: the bare network, for benchmarks; gradient taps still
# declare their probe variable, so the variables have the same structure).
_MODE: contextvars.ContextVar[str] = contextvars.ContextVar("sigprop_tap_mode", default="metrics")


@contextlib.contextmanager
def tap_mode(mode: str):
    """Set what taps do while models are traced inside the block (see ``_MODE``).

    The mode acts when a model is traced: a function jitted outside one mode and called inside
    another reuses its first trace, so jit a separate function per mode."""
    if mode not in ("metrics", "pair", "off"):
        raise ValueError(f"mode={mode!r}; allowed: metrics, pair, off")
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


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


def observe_act(module: nn.Module, x):
    """Sow the activation metrics of ``x`` under ``module``'s path; return ``x``."""
    if module.is_initializing():
        return x
    mode = _MODE.get()
    if mode == "metrics":
        vec = metrics.activation_metrics(jax.lax.stop_gradient(x))
        module.sow(TAPS, _ACT_KEY, vec, init_fn=lambda: None, reduce_fn=lambda _, v: v)
    elif mode == "pair":
        both = jax.lax.all_gather(jax.lax.stop_gradient(x), PAIR_AXIS)
        module.sow(TAPS, _PAIR_KEY, metrics.correlation(both[0], both[1]), init_fn=lambda: None,
                   reduce_fn=lambda _, v: v)
    return x


def observe_grad(module: nn.Module, x):
    """Identity on ``x`` whose backward pass reports ``||d loss / d x||`` under ``module``'s path."""
    probe = module.variable(PROBES, _GRAD_KEY, jnp.zeros, (2,), jnp.float32)
    if _MODE.get() == "off":
        return x
    if _MODE.get() == "pair":
        return _pair_grad_probe(x, probe.value)
    return _grad_probe(x, probe.value)


class Tap(nn.Module):
    """A standalone tap: ``Tap('act', name=...)(x)`` or ``Tap('grad', name=...)(x)``."""

    kind: str = "act"

    @nn.compact
    def __call__(self, x):
        return observe_act(self, x) if self.kind == "act" else observe_grad(self, x)


# --------------------------------------------------------------------------------------------
# Names of scanned stacks


def scan_name(pattern: str, start: int = 0) -> str:
    """The module name of an ``nn.scan`` stack whose layer ``i`` is ``pattern.format(start + i)``."""
    return f"{pattern}+{start}" if start else pattern


def _expand(key: str, i: int) -> str:
    pattern, _, start = key.partition("+")
    return pattern.format(i + int(start or 0))


def _is_stack(key: str) -> bool:
    return "{" in key


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


def _runs(node, leaf_key: str, outer: int) -> list:
    """``[(relative names, array)]`` of the ``leaf_key`` leaves under ``node``; each array has
    the ``outer`` leading axes of the enclosing stacks, then one axis over its names."""
    out = []
    for key, sub in node.items():
        if key == leaf_key and not hasattr(sub, "items"):
            out.append(([""], jnp.expand_dims(sub, outer)))
        elif hasattr(sub, "items"):
            stack = _is_stack(key)
            inner = _runs(sub, leaf_key, outer + stack)
            if not stack:
                out += [([_join(key, r) for r in names], v) for names, v in inner]
                continue
            if not inner:
                continue
            # leaves under a stack: [*outer, n, names, ...]; one run when they can be joined
            first = inner[0][1]
            groups = [inner]
            if any(v.shape[outer + 2:] != first.shape[outer + 2:] or v.dtype != first.dtype
                   for _, v in inner):
                groups = [[run] for run in inner]
            n = first.shape[outer]
            for group in groups:
                v = group[0][1] if len(group) == 1 else jnp.concatenate(
                    [v for _, v in group], axis=outer + 1)
                rel = [r for names, _ in group for r in names]
                out.append(([_join(_expand(key, j), r) for j in range(n) for r in rel],
                            v.reshape(v.shape[:outer] + (-1,) + v.shape[outer + 2:])))
    return out


def collect(tree: Any, leaf_key: str) -> LayerValues:
    """``{layer name: value}`` of every ``leaf_key`` variable in a collection (scanned stacks are
    expanded into their layers' names, see the module doc)."""
    return LayerValues(_runs(tree, leaf_key, 0) if hasattr(tree, "items") else [])


def act_values(taps) -> LayerValues:
    return collect(taps, _ACT_KEY)


def pair_values(taps) -> LayerValues:
    return collect(taps, _PAIR_KEY)


def grad_values(probe_grads) -> LayerValues:
    return collect(probe_grads, _GRAD_KEY)


def ordered(values, names: tuple[str, ...] | None, what: str):
    """Stack ``values`` (a ``{name: value}`` mapping) in the order of ``names``
    (``[layers, ...]``), checking they match. From :class:`LayerValues`, consecutive names of
    one run are one slice of it."""
    if names is None:
        names = tuple(values)
    missing, extra = set(names) - set(values), set(values) - set(names)
    if missing or extra:
        raise RuntimeError(
            f"{what}: declared layer names and observed taps differ "
            f"(missing: {sorted(missing)[:5]}, unexpected: {sorted(extra)[:5]})"
        )
    if not isinstance(values, LayerValues):
        return tuple(names), jnp.stack([values[n] for n in names])
    pieces, start = [], 0
    for k in range(1, len(names) + 1):  # runs of names that are consecutive rows of one array
        r, i = values._where[names[start]]
        if k < len(names) and values._where[names[k]] == (r, i + k - start):
            continue
        run = values.runs[r][1]
        pieces.append(run if (i, k - start) == (0, run.shape[0]) else run[i:i + k - start])
        start = k
    return tuple(names), pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces)
