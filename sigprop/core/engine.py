"""The engine: one compiled core that measures any model, over many seeds, sharded over devices.

::

    jit( vmap over items ( init | given variables -> forward (taps record statistics)
                           -> one backward (gradient taps) [-> the pair pass]
                           -> the spectral step (sigprop.metrics.compute) ) )

An *item* is one seed of one model (``analyze``) or one seed of one grid point (``sweep``,
whose points may differ in traced float values: ``make(values)`` rebuilds the model inside the
trace). The item axis is padded to a multiple of the device count and sharded over a 1-D mesh
(:mod:`sigprop.devices`); everything else is replicated. Layer names travel as pytree
metadata of the outputs (:class:`Named`), so a cached program returns them too.

Models are adapted by a *network*: :class:`LinenNet` (a zoo model, or any ``flax.linen``
module, observed through its own taps or through selectors with ``nn.intercept_methods``) and
:class:`NnxNet` (a ``flax.nnx`` module, observed on a merged copy, :mod:`sigprop.nnx_taps`).
What the taps do is explicit in each ``apply`` (the mutable collections and the probe
collection passed, see :mod:`sigprop.probe`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec

from sigprop import metrics
from sigprop.backend import devices, xla_cpu
from sigprop.core import selectors
from sigprop.taps import nnx_taps, probe
from sigprop.taps.collections import KERNEL_KEYS

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
        """What activation taps record in the main pass (moments always: the finite flags)."""
        n = self.needs & {metrics.MOMENTS, metrics.GRAM, metrics.BRANCH}
        if self.needs & {metrics.MOMENTS, metrics.GRAM, metrics.PAIR}:
            n |= {metrics.MOMENTS}
        return frozenset(n)

    @property
    def backward(self) -> bool:
        return metrics.GRAD in self.needs

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
    fn = plan.loss or default_loss
    value = fn(outputs, key)
    if jnp.shape(value) != ():
        raise ValueError(f"loss={fn!r} must return a scalar; it returned shape "
                         f"{jnp.shape(value)}")
    value = jnp.asarray(value, jnp.float32)
    return value + sum(jnp.sum(e) for e in jax.tree_util.tree_leaves(extra))


class _ByValueOrIdentity:
    """``__hash__`` / ``__eq__`` for a frozen dataclass holding a user's model (a static
    argument of the jitted core): by value when every field hashes (zoo models), else the
    model by identity (e.g. a linen module with a list attribute): the same object reuses its
    compiled program, an equal copy compiles again."""

    def _key(self):
        fields = tuple(getattr(self, f.name) for f in dataclasses.fields(self))
        try:
            hash(fields)
            return fields
        except TypeError:
            return tuple(("id", id(v)) if not _hashable(v) else v for v in fields)

    def __hash__(self):
        return hash((type(self), self._key()))

    def __eq__(self, other):
        # an unhashable field compares by identity (its ("id", id) entry); the jit cache keeps
        # the object alive, so its id is not reused while the entry exists
        return type(self) is type(other) and self._key() == other._key()


def _hashable(v) -> bool:
    try:
        hash(v)
        return True
    except TypeError:
        return False


def order_fn(order: tuple):
    index = {p: i for i, p in enumerate(order)}
    return lambda path: index.get(tuple(path), len(index))


def named(tree, key, order) -> Named:
    values = probe.collect(tree, key, order)
    return Named(tuple(values), probe.stacked(values))


# ------------------------------------------------------------------------------------------------
# flax linen


@dataclasses.dataclass(frozen=True, eq=False)
class LinenNet(_ByValueOrIdentity):
    """A linen module and what is observed in it.

    ``acts`` / ``grads``: module paths (``"a/b"``) observed by selectors (an interceptor wraps
    their ``__call__`` output); ``order``: every module path (tuple) in call-exit order, which
    orders the layer names; ``apply_kwargs``: keyword arguments of every model call."""

    module: nn.Module
    acts: tuple = ()
    grads: tuple = ()
    order: tuple = ()
    apply_kwargs: tuple = ()

    kind = "linen"

    def _intercept(self):
        acts, grads = frozenset(self.acts), frozenset(self.grads)
        if not acts and not grads:
            return contextlib.nullcontext()

        def interceptor(next_fun, args, kwargs, ctx):
            y = next_fun(*args, **kwargs)
            if ctx.method_name != "__call__" or not isinstance(y, jax.Array):
                return y
            path = "/".join(ctx.module.path)
            if path in grads:
                y = probe.observe_grad(ctx.module, y)
            if path in acts:
                y = probe.observe_act(ctx.module, y)
            return y

        return nn.intercept_methods(interceptor)

    def init(self, key, x):
        with self._intercept():
            return dict(self.module.init(key, x, **dict(self.apply_kwargs)))

    def _apply(self, variables, x, mutable):
        with self._intercept():
            return self.module.apply(variables, x, mutable=mutable, **dict(self.apply_kwargs))

    def _pass(self, variables, x, label_key, plan: Plan, collections, probe_collection):
        """One forward (recording ``collections``) and, with ``probe_collection``, one backward
        w.r.t. the zero probes passed under that name. Returns ``(state, probe gradients)``."""
        rest = {c: v for c, v in variables.items() if c not in (probe.PROBES, probe.PAIR_PROBES)}
        mutable = [c for c in rest if c not in ("params", KERNEL_KEYS)]  # e.g. batch_stats
        mutable += list(collections) + [probe.LOSSES]

        def loss_fn(pr):
            v = rest if probe_collection is None else {**rest, probe_collection: pr}
            out, state = self._apply(v, x, mutable)
            return loss_value(plan, out, label_key, state.get(probe.LOSSES, {})), state

        probes = variables.get(probe.PROBES, {})
        if probe_collection is None:
            return loss_fn(probes)[1], {}
        grads, state = jax.grad(loss_fn, has_aux=True)(probes)
        return state, grads

    def measure(self, variables, x, label_key, plan: Plan) -> dict:
        order = order_fn(self.order)
        state, grads = self._pass(variables, x, label_key, plan,
                                  [probe.NEED_COLLECTIONS[n] for n in plan.act_needs],
                                  probe.PROBES if plan.backward else None)
        out = {}
        if metrics.MOMENTS in plan.act_needs:
            out["moments"] = named(state.get(probe.MOMENTS, {}), probe.MOMENTS_KEY, order)
        if metrics.GRAM in plan.act_needs:
            gram = state.get(probe.GRAM, {})
            out["gram_hi"] = named(gram, probe.HI_KEY, order)
            out["gram_lo"] = named(gram, probe.LO_KEY, order)
        if metrics.BRANCH in plan.act_needs:
            out["branch"] = named(state.get(probe.BRANCH, {}), probe.BRANCH_KEY, order)
        if plan.backward:
            out["grad"] = named(grads, probe.GRAD_KEY, order)
        return out

    def pair(self, variables, xs, label_key, plan: Plan) -> dict:
        """The pair pass over ``xs = [x, x + s xi]`` (vmapped over :data:`probe.PAIR_AXIS`)."""
        order = order_fn(self.order)
        grads = metrics.PAIR_GRAD in plan.needs

        def one(x):
            state, g = self._pass(variables, x, label_key, plan, [probe.PAIR],
                                  probe.PAIR_PROBES if grads else None)
            res = {"pair": named(state.get(probe.PAIR, {}), probe.PAIR_KEY, order)}
            if grads:
                res["pair_grad"] = named(g, probe.GRAD_KEY, order)
            return res

        out = jax.vmap(one, axis_name=probe.PAIR_AXIS)(xs)
        return jax.tree_util.tree_map(lambda v: v[0], out)

    def with_module(self, module):
        return dataclasses.replace(self, module=module)


def _linen_calls(module, x_abstract, apply_kwargs):
    """Every module call of one ``init`` + ``apply`` traced abstractly: ``[(path tuple,
    module)]`` in call-exit order (first exit of each path), and whether the model has sigprop
    taps of its own: ``(activation or branch, gradient)``."""
    calls: dict = {}

    def record(next_fun, args, kwargs, ctx):
        y = next_fun(*args, **kwargs)
        calls.setdefault(tuple(ctx.module.path), ctx.module)
        return y

    kw = dict(apply_kwargs)

    def run(k, x):
        with nn.intercept_methods(record):
            v = module.init(k, x, **kw)
        calls.clear()  # the order of the apply below (init may call modules differently)
        rest = {c: a for c, a in v.items() if c != probe.PROBES}
        mutable = [c for c in rest if c not in ("params", KERNEL_KEYS)]
        mutable += [probe.MOMENTS, probe.BRANCH, probe.LOSSES]
        with nn.intercept_methods(record):
            _, state = module.apply(v, x, mutable=mutable, **kw)
        return v.get(probe.PROBES, {}), state.get(probe.MOMENTS, {}), state.get(probe.BRANCH, {})

    probes, moments, branch = jax.eval_shape(run, jax.random.key(0), x_abstract)
    explicit = (bool(jax.tree_util.tree_leaves((moments, branch))),
                bool(jax.tree_util.tree_leaves(probes)))
    return list(calls.items()), explicit


def linen_network(module, x_abstract, taps, apply_kwargs=()) -> LinenNet:
    """A :class:`LinenNet` for ``module``: its call order, and the selectors' paths."""
    try:
        calls, explicit = _linen_calls(module, x_abstract, apply_kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ValueError) and str(e).startswith(("taps", "loss", "inputs")):
            raise
        raise ValueError(f"model: {type(module).__name__} failed on inputs of shape "
                         f"{tuple(x_abstract.shape)} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from e
    named = [("/".join(p), m) for p, m in calls]
    acts, grads = selectors.select(taps, named, explicit)
    return LinenNet(module, acts, grads, tuple(p for p, _ in calls), tuple(apply_kwargs))


# ------------------------------------------------------------------------------------------------
# flax nnx


@dataclasses.dataclass(frozen=True, eq=False)
class NnxNet(_ByValueOrIdentity):
    """An nnx model as ``graphdef`` + per-seed state (``factory(rngs)`` builds a fresh one per
    seed; ``None``: the state is given). ``acts`` / ``grads``: observed module paths and
    ``explicit``: ``(name, kind)`` of :func:`sigprop.tap` calls; ``order``: names in call-exit
    order."""

    graphdef: Any
    factory: Callable | None = None
    acts: tuple = ()
    grads: tuple = ()
    explicit: tuple = ()
    order: tuple = ()
    apply_kwargs: tuple = ()

    kind = "nnx"

    def init(self, key, x):
        return nnx.split(self.factory(nnx.Rngs(key)))[1]

    def _run(self, state, x, needs, probes, pair=False):
        model = nnx.merge(self.graphdef, state, copy=True)  # Variables of this trace level
        grad_names = set(self.grads) | {n for n, k in self.explicit if k in ("gradient", "grad")}
        ctx = nnx_taps.Context(self.acts, grad_names, needs, probes, pair)
        nnx_taps.install(model, ctx, set(self.acts) | set(self.grads))
        return model(x, **dict(self.apply_kwargs)), ctx

    def _probes(self):
        names = list(self.grads) + [n for n, k in self.explicit if k in ("gradient", "grad")]
        return {n: jnp.zeros((2,), jnp.float32) for n in names}

    def _sorted(self, values: dict, key: str | None = None) -> Named:
        index = {n: i for i, n in enumerate(self.order)}
        names = sorted(values, key=lambda n: index.get(n, len(index)))
        if not names:
            return Named((), None)
        return Named(names, jnp.stack([values[n] if key is None else values[n][key]
                                       for n in names]))

    def measure(self, state, x, label_key, plan: Plan) -> dict:
        needs = plan.act_needs

        def loss_fn(pr):
            out, ctx = self._run(state, x, needs, pr)
            return loss_value(plan, out, label_key, ()), (ctx.records, ctx.branches)

        if plan.backward:
            g, (records, branches) = jax.grad(loss_fn, has_aux=True)(self._probes())
        else:
            g, (records, branches) = {}, loss_fn({})[1]
        out = {}
        if metrics.MOMENTS in needs:
            out["moments"] = self._sorted(records, probe.MOMENTS_KEY)
        if metrics.GRAM in needs:
            out["gram_hi"] = self._sorted(records, probe.HI_KEY)
            out["gram_lo"] = self._sorted(records, probe.LO_KEY)
        if metrics.BRANCH in needs:
            out["branch"] = self._sorted(branches)
        if plan.backward:
            out["grad"] = self._sorted(g)
        return out

    def pair(self, state, xs, label_key, plan: Plan) -> dict:
        grads = metrics.PAIR_GRAD in plan.needs

        def one(x):
            def loss_fn(pr):
                out, ctx = self._run(state, x, frozenset({metrics.PAIR}), pr, pair=True)
                return loss_value(plan, out, label_key, ()), ctx.records

            if grads:
                g, records = jax.grad(loss_fn, has_aux=True)(self._probes())
            else:
                g, records = {}, loss_fn({})[1]
            res = {"pair": self._sorted(records, probe.PAIR_KEY)}
            if grads:
                res["pair_grad"] = self._sorted(g)
            return res

        out = jax.vmap(one, axis_name=probe.PAIR_AXIS)(xs)
        return jax.tree_util.tree_map(lambda v: v[0], out)


def nnx_network(model, x_abstract, taps, apply_kwargs=()) -> tuple[NnxNet, Any]:
    """An :class:`NnxNet` for an nnx instance or a factory ``rngs -> nnx.Module``; returns
    ``(network, the instance's state or None)``."""
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)
        factory, abstract = None, state
    else:
        try:
            built = nnx.eval_shape(lambda: model(nnx.Rngs(0)))
        except Exception as e:  # noqa: BLE001 - the user's factory: say what failed
            raise ValueError(f"model: the factory {model!r} failed on nnx.Rngs(0) "
                             f"({type(e).__name__}: {e})") from e
        if not isinstance(built, nnx.Module):
            raise ValueError(f"model: the factory {model!r} returned {type(built).__name__}, "
                             "not an nnx.Module")
        graphdef, abstract = nnx.split(built)
        factory, state = model, None
    ctx = nnx_taps.Context(record_calls=True)
    kw = dict(apply_kwargs)

    def run(st, x):
        m = nnx.merge(graphdef, st, copy=True)
        nnx_taps.install(m, ctx, None)
        m(x, **kw)
        return 0

    try:
        jax.eval_shape(run, abstract, x_abstract)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model: {type(model).__name__} failed on inputs of shape "
                         f"{tuple(x_abstract.shape)} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from e
    first: dict = {}  # path -> module, at its first exit
    for p, m in ctx.calls:
        first.setdefault(p, m)
    calls = list(first.items())
    explicit = tuple(dict.fromkeys(ctx.explicit))
    module_calls = [(p, m) for p, m in calls if m is not None]
    kinds = {k for _, k in explicit}
    acts, grads = selectors.select(taps, module_calls, (
        bool(kinds & {"activation", "act", "branch"}), bool(kinds & {"gradient", "grad"})))
    net = NnxNet(graphdef, factory, acts, grads, explicit, tuple(p for p, _ in calls),
                 tuple(apply_kwargs))
    return net, state


# ------------------------------------------------------------------------------------------------
# The compiled core


def seed_keys(key, seeds: int):
    """Seed ``i`` uses ``fold_in(key, i)``: its numbers do not depend on how many seeds run."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(seeds))


def _finite(flags, values):
    ok = flags > 0.5
    for v in values:
        ok = ok & jnp.isfinite(v)
    return ok


def measure_item(net, shape, dtype, key, x, variables, plan: Plan) -> dict:
    """Everything measured for one item: ``{metric or flag: Named [layers]}``.

    ``key`` splits into the data key (``x ~ N(0, 1)`` when ``x`` is None, and the pair pass's
    ``xi``), the init key and the label key, as in every earlier version of sigprop."""
    k_data, k_run = jax.random.split(key)
    if x is None:
        x = jax.random.normal(k_data, shape, jnp.float32)
    k_init, k_label = jax.random.split(k_run)
    if variables is None:
        variables = net.init(k_init, x)
    records = net.measure(variables, x, k_label, plan)
    if plan.pair:
        noise = plan.noise or DEFAULT_NOISE
        xi = jax.random.normal(jax.random.fold_in(k_data, 1), x.shape, jnp.float32)
        records.update(net.pair(variables, jnp.stack([x, x + noise * xi]), k_label, plan))
    return finish(records, plan)


# per layer axis: the records that carry its names, and where each keeps its finite flag
_AXIS_RECORDS = {metrics.LAYER: (("moments", 2), ("pair", None)),
                 metrics.GRAD_LAYER: (("grad", 1), ("pair_grad", 1)),
                 metrics.BRANCH_LAYER: (("branch", 1),)}
_AXIS_WHAT = {metrics.LAYER: "activation", metrics.GRAD_LAYER: "gradient",
              metrics.BRANCH_LAYER: "residual-branch"}


def finish(records: dict, plan: Plan) -> dict:
    """The spectral step: metrics from the records (:func:`sigprop.metrics.compute`), each with
    its layer names, plus each axis's finite flag (the taps' flag and every metric finite).

    A metric whose axis has no tap is an error, unless it is in ``plan.optional``."""
    wanted, sources = list(plan.metrics), {}
    for axis, candidates in _AXIS_RECORDS.items():
        uses = [m for m in wanted if metrics.REGISTRY[m].axis == axis]
        present = [(r, col) for r, col in candidates
                   if r in records and records[r].value is not None]
        if not uses:
            continue
        if present:
            sources[axis] = present
        elif all(m in plan.optional for m in uses):  # e.g. residual_variance without blocks
            wanted = [m for m in wanted if m not in uses]
        else:
            raise ValueError(f"taps: the model has no {_AXIS_WHAT[axis]} tap, so "
                             f"{', '.join(uses)} cannot be measured; select modules with "
                             "taps=sigprop.Taps(...) or add sigprop.tap(...) calls")
    if not wanted:
        raise ValueError("taps: the model has no tap at all (no normalization module, no "
                         "dense/conv layer); select modules with taps=sigprop.Taps(...) or add "
                         "sigprop.tap(...) calls")
    arrays = {k: v.value for k, v in records.items() if v.value is not None}
    values = metrics.compute(arrays, wanted)
    out = {}
    for axis, present in sources.items():
        on_axis = [m for m in wanted if metrics.REGISTRY[m].axis == axis]
        names = records[present[0][0]].names
        for m in on_axis:
            out[m] = Named(names, values[m])
        flags = [records[r].value[..., col] for r, col in present if col is not None]
        if flags:
            out[metrics.FLAGS[axis]] = Named(names, _finite(flags[0], [values[m]
                                                                       for m in on_axis]))
    return out


def _core_fn(net, make, shape, dtype, keys, x, variables, values, plan, precision, impl,
             mesh=None):
    """All items in one vmapped call. ``keys``: raw key data ``[n, ...]`` (``impl``);
    ``variables``: ``[n, ...]`` leaves or None; ``values``: ``[n, F]`` traced floats for
    ``make`` (a sweep's value group) or None.

    ``mesh`` (more than one device): the leading axes are sharded over it and each device runs
    the vmapped program on its own items (``jax.shard_map``), so nothing crosses devices: the
    partitioner would otherwise all-reduce a batch-wide predicate (the Gram record's float64
    check) and all-gather every Gram matrix to each device for the LAPACK call, which it cannot
    partition (every device then solved every item's eigenvalue problems)."""
    def local(keys, x, variables, values):
        keys = jax.random.wrap_key_data(keys, impl=impl)

        def one(key, v, vals):
            item = net if make is None else net.with_module(make(vals))
            return measure_item(item, shape, dtype, key, x, v, plan)

        with jax.default_matmul_precision(precision):
            return jax.vmap(one, in_axes=(0, None if variables is None else 0,
                                          None if values is None else 0))(keys, variables,
                                                                           values)

    if mesh is None or mesh.devices.size == 1:
        return local(keys, x, variables, values)
    lead, whole = PartitionSpec(devices.AXIS), PartitionSpec()
    return jax.shard_map(local, mesh=mesh, in_specs=(lead, whole, lead, lead), out_specs=lead,
                         check_vma=False)(keys, x, variables, values)


_core = xla_cpu.fast_rng(jax.jit(_core_fn, static_argnames=(
    "net", "make", "shape", "dtype", "plan", "precision", "impl", "mesh")))


def _pad(tree, n: int, padded: int):
    if padded == n:
        return tree
    return jax.tree_util.tree_map(
        lambda a: np.concatenate([np.asarray(a), np.repeat(np.asarray(a)[-1:], padded - n,
                                                           axis=0)]), tree)


def execute(net, shape, dtype, keys, x, variables, plan: Plan, precision="highest",
            mesh=None, make=None, values=None) -> dict:
    """Run :func:`_core` on ``keys [n]`` (typed), the item axis padded to a multiple of the
    device count (extra items repeat the last one: computed, then dropped) and sharded over
    ``mesh`` (default: every device). Returns ``{name: Named(names, numpy [n, layers])}``.

    jit traces before it compiles, so a bad loss or a model without taps is a ``ValueError``
    raised by the trace, before anything compiles."""
    m = devices.mesh() if mesh is None else mesh
    n = keys.shape[0]
    impl = str(jax.random.key_impl(keys))
    data = np.asarray(jax.random.key_data(keys))
    padded = devices.padded_size(n, m)
    args = dict(net=net, make=make, shape=shape, dtype=dtype, plan=plan, precision=precision,
                impl=impl)
    data = _pad(data, n, padded)
    variables = None if variables is None else jax.tree_util.tree_map(
        lambda a: devices.shard_leading(a, m), _pad(variables, n, padded))
    values = None if values is None else devices.shard_leading(_pad(np.asarray(values,
                                                                               np.float32),
                                                                    n, padded), m)
    if x is not None:
        x = jax.device_put(x, devices.replicated(m))
    out = _core(keys=devices.shard_leading(data, m), x=x, variables=variables, values=values,
                mesh=m, **args)
    host = devices.to_host(out)
    return jax.tree_util.tree_map(lambda a: a[:n], host)


__all__ = ["Named", "Plan", "LinenNet", "NnxNet", "linen_network", "nnx_network", "execute",
           "measure_item", "seed_keys", "default_loss", "DEFAULT_NOISE"]
