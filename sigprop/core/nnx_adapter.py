"""The adapter that owns a user's ``flax.nnx`` model: :class:`NnxNet`, observed on a merged copy
(:mod:`sigprop.taps.nnx_taps`), built by :func:`nnx_network`; the same methods as the linen
adapter (:mod:`sigprop.core.adapters`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from sigprop import metrics
from sigprop.core import norm_taps, selectors
from sigprop.core.adapters import (
    NEED_OF,
    OBSERVED,
    RECORDS,
    ByValueOrIdentity,
    check_attention,
)
from sigprop.core.plan import Named, Plan, loss_value
from sigprop.taps import nnx_taps, probe

# ------------------------------------------------------------------------------------------------
# flax nnx


@dataclasses.dataclass(frozen=True, eq=False)
class NnxNet(ByValueOrIdentity):
    """An nnx model as ``graphdef`` + per-seed state (``factory(rngs)`` builds a fresh one per
    seed; ``None``: the state is given). ``acts`` / ``grads``: observed module paths and
    ``explicit``: ``(name, kind)`` of :func:`sigprop.tap` calls; ``order``: names in call-exit
    order; ``attns``: flax attention modules whose ``attention_fn`` is observed."""

    graphdef: Any
    factory: Callable | None = None
    acts: tuple = ()
    grads: tuple = ()
    explicit: tuple = ()
    order: tuple = ()
    apply_kwargs: tuple = ()
    attns: tuple = ()
    norms: tuple = ()

    kind = "nnx"

    def init(self, key, x):
        return nnx.split(self.factory(nnx.Rngs(key)))[1]

    def _run(self, state, x, needs, probes, pair=False, norm_probes=None):
        """One forward; ``norm_probes``: ``{path: zero [4]}`` of the normalizers'
        gradient-noise taps (:mod:`sigprop.core.norm_taps`), or None."""
        model = nnx.merge(self.graphdef, state, copy=True)  # Variables of this trace level
        grad_names = set(self.grads) | {n for n, k in self.explicit if k in ("gradient", "grad")}
        ctx = nnx_taps.Context(self.acts, grad_names, needs, probes, pair, attns=self.attns,
                               norm_probes=norm_probes, norm_tap=norm_taps.observe_nnx)
        nnx_taps.install(model, ctx, set(self.acts) | set(self.grads) | set(norm_probes or ()))
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
        params, rest = nnx.split_state(state, nnx.Param, ...)

        def loss_fn(pr, prm):
            st = state if prm is None else nnx.merge_state(prm, rest)
            out, ctx = self._run(st, x, needs, pr[0], norm_probes=pr[1])
            return loss_value(plan, out, label_key, ()), (ctx.records, ctx.branches,
                                                          ctx.attention)

        norm_probes = ({n: jnp.zeros((4,), jnp.float32) for n in self.norms} if plan.gns
                       else None)
        if plan.backward or plan.param_backward:
            ((g, gn), pg), (records, branches, attn) = jax.grad(
                loss_fn, argnums=(0, 1), has_aux=True)(
                (self._probes(), norm_probes), params if plan.param_backward else None)
        else:
            g, gn, pg = {}, None, None
            records, branches, attn = loss_fn(({}, None), None)[1]
        out = {}
        for name, _, key in RECORDS:
            if NEED_OF[name] in needs:
                source = {"branch": branches, "attention": attn, "attention_logits": attn}.get(
                    name, records)
                out[name] = self._sorted(source, None if name == "branch" else key)
        if plan.backward:
            out["grad"] = self._sorted(g)
        if plan.gns:
            out["gns"] = self._sorted(gn)
        if plan.param_backward:
            out["param_grad"] = self._sorted(_flat_weights(probe.weight_grad_norms(
                pg.to_pure_dict())))
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
        return self._sorted(ctx.records, OBSERVED), out


def _flat_weights(tree, path=()) -> dict:
    """``{module path: record}`` of :func:`sigprop.taps.probe.weight_grad_norms`' nested dict."""
    out = {}
    for k, v in tree.items():
        if k == probe.PARAM_KEY:
            out[nnx_taps.path_name(path)] = v
        else:
            out.update(_flat_weights(v, path + (k,)))
    return out


class _ObserveContext(nnx_taps.Context):
    """nnx: every activation tap records ``fn(y)``."""

    def __init__(self, acts, fn):
        super().__init__(acts)
        self.fn = fn

    def _act(self, name, y):
        self.records[name] = {OBSERVED: self.fn(y)}
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
    acts, grads, attns = selectors.select(taps, module_calls, (
        bool(kinds & {"activation", "act", "branch"}), bool(kinds & {"gradient", "grad"}),
        "attention" in kinds))
    check_attention(attns, dict(module_calls))
    # a weight's layer name is its module's path: in call order with the modules
    norms = tuple(p for p, m in module_calls if norm_taps.observable(m))
    net = NnxNet(graphdef, factory, acts, grads, explicit, tuple(p for p, _ in calls),
                 tuple(apply_kwargs), attns, norms)
    return net, state


__all__ = ["NnxNet", "nnx_network"]
