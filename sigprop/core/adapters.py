"""The adapters that own a user's model: :class:`LinenNet` (a zoo model, or any ``flax.linen``
module, observed through its own taps or through selectors with ``nn.intercept_methods``) and
:class:`NnxNet` (a ``flax.nnx`` module, observed on a merged copy, :mod:`sigprop.taps.nnx_taps`),
built by :func:`linen_network` / :func:`nnx_network`.

Everything that differs between linen and nnx lives here, behind the same methods: ``init``
(with the tap collections) and ``init_weights`` (without), ``measure`` / ``pair`` (the engine's
passes, :mod:`sigprop.core.engine`), ``split`` / ``merge`` of the variables into ``(params,
rest)``, ``apply_train`` (a train-mode forward for the objective), ``zero_probes`` (the
gradient probes ``measure`` takes), ``check_variables`` (a user's ``variables=``) and
``observe`` (a forward where every activation tap records a function of its value). What the
taps do is explicit in each ``apply`` (the mutable collections and the probe collection passed,
see :mod:`sigprop.probe`).

An adapter is a static argument of the jitted programs: it hashes and compares by value when
its fields hash (:class:`_ByValueOrIdentity`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sigprop import metrics
from sigprop.core import selectors
from sigprop.core.plan import Named, Plan, loss_value, named, order_fn
from sigprop.taps import nnx_taps, probe
from sigprop.taps.collections import KERNEL_KEYS

# the collections of sigprop's taps (zero probes, records, sown loss terms): not the model's
_TAP_COLLECTIONS = (probe.PROBES, probe.PAIR_PROBES) + probe.SOWN
_OBSERVED = "observed"  # leaf key of what observe records (not one of probe's keys)


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

    # the model's own variables (the objective, training, the Hessian)

    def init_weights(self, key, x):
        """The variables ``init`` builds, without sigprop's tap collections."""
        return self.without_taps(self.init(key, x))

    def without_taps(self, variables):
        """``variables`` without sigprop's tap collections (zero probes, records)."""
        return {c: t for c, t in variables.items() if c not in _TAP_COLLECTIONS}

    def split(self, variables):
        """``(params, rest)``: the trainable parameters and every other collection (the tap
        collections dropped)."""
        variables = self.without_taps(variables)
        return variables.get("params", {}), {c: t for c, t in variables.items()
                                              if c != "params"}

    def merge(self, params, rest, probes=None):
        """The variables ``measure`` takes: ``params`` and ``rest``, with the zero gradient
        ``probes`` (:meth:`zero_probes`) when there are any."""
        return {"params": params, **rest, **({probe.PROBES: probes} if probes else {})}

    def apply_train(self, params, rest, x):
        """``(outputs, new rest, extra loss terms)`` of one train-mode forward pass."""
        mutable = [c for c in rest if c != probe.KERNEL_KEYS] + [probe.LOSSES]
        out, state = self._apply({"params": params, **rest}, x, mutable)
        extra = sum((jnp.sum(e) for e in jax.tree_util.tree_leaves(
            state.pop(probe.LOSSES, {}))), jnp.float32(0))
        new_rest = {**rest, **{c: v for c, v in state.items()}}
        return out, new_rest, extra

    def zero_probes(self, x_abstract):
        """The zero gradient probes of the network on inputs like ``x_abstract``."""
        shapes = jax.eval_shape(self.init, jax.random.key(0), x_abstract)
        return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                      shapes.get(probe.PROBES, {}))

    def check_variables(self, variables, seeds: int, x_abstract):
        """The user's linen ``variables`` with zero probes added, checked against the model's
        structure and shapes, as ``[seeds, ...]`` leaves."""
        if not hasattr(variables, "items"):
            raise ValueError(f"variables= must be a dict of collections like model.init "
                             f"returns; got {type(variables).__name__}")
        expected = jax.eval_shape(self.init, jax.random.key(0), x_abstract)
        probes = expected.pop(probe.PROBES, None)
        # Collections the model only sows (RegNorm's extra loss terms, sigprop's records) are
        # outputs: a given value is dropped, or ``sow`` would add the pass's terms to it.
        for c in probe.SOWN:
            expected.pop(c, None)
        given = {c: v for c, v in dict(variables).items()
                 if c not in (probe.PROBES,) + probe.SOWN}
        missing = sorted(set(expected) - set(given))
        if missing:
            raise ValueError(f"variables=: the model also needs the collection(s) {missing} "
                             f"(give everything model.init returns); got {sorted(given)}")
        want = {c: v for c, v in expected.items() if c in given}
        if jax.tree_util.tree_structure(want) != jax.tree_util.tree_structure(given):
            raise _structure_error("collections or names differ", want, given)
        lead = None
        for w, g in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(given)):
            gs = np.shape(g)
            if gs == w.shape:
                lead_here = 0
            elif gs[1:] == w.shape:
                lead_here = gs[0]
            else:
                raise ValueError(f"variables=: a leaf of shape {gs} where the model has "
                                 f"{w.shape} (or [seeds, *{w.shape}])")
            if lead is None:
                lead = lead_here
            elif lead != lead_here:
                raise ValueError("variables=: some leaves have a leading seed axis and some not")
        if lead == 0:
            if seeds != 1:
                raise ValueError(f"seeds={seeds} with variables= that have no leading seed "
                                 "axis: give [seeds, ...] leaves or seeds=1")
            given = jax.tree_util.tree_map(lambda a: np.asarray(a)[None], given)
        elif lead != seeds:
            raise ValueError(f"seeds={seeds}, but variables= have a leading axis of {lead}")
        if probes is not None:
            given[probe.PROBES] = jax.tree_util.tree_map(
                lambda s: np.zeros((seeds,) + s.shape, s.dtype), probes)
        return given

    def observe(self, variables, x, fn):
        """One train-mode forward where every activation tap records ``fn(y)`` of its value
        ``y`` (an array): ``(Named [taps, ...] in call order, outputs)``."""
        mutable = [c for c in variables if c not in ("params", KERNEL_KEYS)]
        mutable += [probe.MOMENTS, probe.LOSSES]
        shapes = jax.eval_shape(lambda v, x: self._apply(v, x, mutable)[1], variables, x)
        taps = _moment_paths(shapes.get(probe.MOMENTS, {}))

        def interceptor(next_fun, args, kwargs, ctx):
            # a tap's record sits under the module whose __call__ returns the tapped value (a
            # zoo layer, a sigprop.tap's Tap module, a selected module)
            y = next_fun(*args, **kwargs)
            if (ctx.method_name == "__call__" and isinstance(y, jax.Array)
                    and tuple(ctx.module.path) in taps):
                ctx.module.sow(probe.MOMENTS, _OBSERVED, fn(y), init_fn=lambda: None,
                               reduce_fn=lambda _, v: v)
            return y

        with nn.intercept_methods(interceptor):
            out, state = self._apply(variables, x, mutable)
        return named(state.get(probe.MOMENTS, {}), _OBSERVED, order_fn(self.order)), out


def _structure_error(what, want, got) -> ValueError:
    return ValueError(f"variables=: the structure does not fit the model ({what}); expected "
                      f"{jax.tree_util.tree_structure(want)}, got "
                      f"{jax.tree_util.tree_structure(got)}")


def _moment_paths(tree, path=()) -> set:
    """Module paths (tuples; scanned stacks unexpanded) whose moments record holds ``"m"``:
    the activation taps."""
    found = set()
    for k, v in tree.items():
        if hasattr(v, "items"):
            found |= _moment_paths(v, path + (k,))
        elif k == probe.MOMENTS_KEY:
            found.add(path)
    return found


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

    # the model's own variables (the objective, training, the Hessian)

    def init_weights(self, key, x):
        """The state ``init`` builds (an nnx state holds no tap collection)."""
        return self.init(key, x)

    def without_taps(self, variables):
        return variables

    def split(self, variables):
        """``(params, rest)``: the ``nnx.Param`` state and every other variable."""
        params, rest = nnx.split_state(variables, nnx.Param, ...)
        return params, rest

    def merge(self, params, rest, probes=None):
        """The state ``measure`` takes (the gradient probes are its own: ``probes`` unused)."""
        return nnx.merge_state(params, rest)

    def apply_train(self, params, rest, x):
        """``(outputs, new rest, extra loss terms)`` of one train-mode forward pass."""
        model = nnx.merge(self.graphdef, params, rest, copy=True)
        out = model(x, **dict(self.apply_kwargs))
        _, new_rest = nnx.split_state(nnx.state(model), nnx.Param, ...)
        return out, new_rest, jnp.float32(0)

    def zero_probes(self, x_abstract):
        """None: ``measure`` makes its own zero probes."""
        return None

    def check_variables(self, variables, seeds: int, x_abstract):
        raise ValueError("variables= is for flax.linen models; an nnx model holds its own")

    def observe(self, state, x, fn):
        """One train-mode forward where every activation tap records ``fn(y)`` of its value
        ``y`` (an array): ``(Named [taps, ...] in call order, outputs)``."""
        model = nnx.merge(self.graphdef, state, copy=True)
        ctx = _ObserveContext(self.acts, fn=fn)
        nnx_taps.install(model, ctx, set(self.acts))
        out = model(x, **dict(self.apply_kwargs))
        return self._sorted(ctx.records, _OBSERVED), out


class _ObserveContext(nnx_taps.Context):
    """nnx: every activation tap records ``fn(y)``."""

    def __init__(self, acts, fn):
        super().__init__(acts)
        self.fn = fn

    def _act(self, name, y):
        self.records[name] = {_OBSERVED: self.fn(y)}
        return y


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


__all__ = ["LinenNet", "NnxNet", "linen_network", "nnx_network"]
