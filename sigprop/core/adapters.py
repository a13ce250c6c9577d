"""The adapter that owns a user's linen model: :class:`LinenNet` (a zoo model, or any
``flax.linen`` module, observed through its own taps or through selectors with
``nn.intercept_methods``), built by :func:`linen_network`, and what the nnx adapter
(:mod:`sigprop.core.nnx_adapter`: :class:`NnxNet`, a ``flax.nnx`` module observed on a merged
copy) shares with it: the records of a pass, the attention check, hashing by value.

Everything that differs between linen and nnx lives here, behind the same methods: ``init``
(with the tap collections) and ``init_weights`` (without), ``measure`` / ``pair`` (the engine's
passes, :mod:`sigprop.core.engine`), ``split`` / ``merge`` of the variables into ``(params,
rest)``, ``apply_train`` (a train-mode forward for the objective), ``zero_probes`` (the
gradient probes ``measure`` takes), ``check_variables`` (a user's ``variables=``) and
``observe`` (a forward where every activation tap records a function of its value). What the
taps do is explicit in each ``apply`` (the mutable collections and the probe collection passed,
see :mod:`sigprop.probe`).

An adapter is a static argument of the jitted programs: it hashes and compares by value when
its fields hash (:class:`ByValueOrIdentity`).
"""

from __future__ import annotations

import contextlib
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sigprop import metrics
from sigprop.core import norm_taps, selectors
from sigprop.core.plan import Plan, loss_value, named, order_fn
from sigprop.taps import attention, probe
from sigprop.taps.collections import KERNEL_KEYS

# the collections of sigprop's taps (zero probes, records, sown loss terms): not the model's
_TAP_COLLECTIONS = (probe.PROBES, probe.PAIR_PROBES) + probe.SOWN
OBSERVED = "observed"  # leaf key of what observe records (not one of probe's keys)


class ByValueOrIdentity:
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
class LinenNet(ByValueOrIdentity):
    """A linen module and what is observed in it.

    ``acts`` / ``grads``: module paths (``"a/b"``) observed by selectors (an interceptor wraps
    their ``__call__`` output); ``attns``: flax attention modules whose ``attention_fn`` is
    observed (:mod:`sigprop.taps.attention`); ``order``: every module path (tuple) in call-exit
    order, which orders the layer names; ``apply_kwargs``: keyword arguments of every model
    call."""

    module: nn.Module
    acts: tuple = ()
    grads: tuple = ()
    order: tuple = ()
    apply_kwargs: tuple = ()
    attns: tuple = ()
    norms: tuple = ()

    kind = "linen"

    def _intercept(self, gns: bool = False):
        """The interceptor of a pass: selected taps, flax attention, and (declared in init,
        active with ``gns``) the normalizers' gradient-noise taps (:mod:`sigprop.core.norm_taps`)."""
        acts, grads, attns = frozenset(self.acts), frozenset(self.grads), frozenset(self.attns)
        norms = frozenset(self.norms)
        if not acts and not grads and not attns and not norms:
            return contextlib.nullcontext()

        def interceptor(next_fun, args, kwargs, ctx):
            path = "/".join(ctx.module.path)
            if ctx.method_name == "__call__" and path in attns:
                y = _observing_attention(ctx.module, next_fun, args, kwargs)
            else:
                y = next_fun(*args, **kwargs)
            if ctx.method_name != "__call__" or not isinstance(y, jax.Array):
                return y
            if path in norms and norm_taps.observable(ctx.module):
                y = norm_taps.observe(ctx.module, args, kwargs, y, gns)
            if path in grads:
                y = probe.observe_grad(ctx.module, y)
            if path in acts:
                y = probe.observe_act(ctx.module, y)
            return y

        return nn.intercept_methods(interceptor)

    def init(self, key, x):
        with self._intercept():
            return dict(self.module.init(key, x, **dict(self.apply_kwargs)))

    def _apply(self, variables, x, mutable, gns: bool = False):
        with self._intercept(gns):
            return self.module.apply(variables, x, mutable=mutable, **dict(self.apply_kwargs))

    def _pass(self, variables, x, label_key, plan: Plan, collections, probe_collection,
              params: bool = False, gns: bool = False):
        """One forward (recording ``collections``) and one backward w.r.t. the zero probes
        passed under ``probe_collection`` (if any) and, ``params``, the parameters (``gns``:
        the normalizers' gradient-noise taps active). Returns ``(state, probe gradients,
        parameter gradients)``."""
        rest = {c: v for c, v in variables.items() if c not in (probe.PROBES, probe.PAIR_PROBES)}
        mutable = [c for c in rest if c not in ("params", KERNEL_KEYS)]  # e.g. batch_stats
        mutable += list(collections) + [probe.LOSSES]

        def loss_fn(pr, prm):
            v = dict(rest) if prm is None else {**rest, "params": prm}
            if probe_collection is not None:
                v[probe_collection] = pr
            out, state = self._apply(v, x, mutable, gns)
            return loss_value(plan, out, label_key, state.get(probe.LOSSES, {})), state

        probes = variables.get(probe.PROBES, {})
        if probe_collection is None and not params:
            return loss_fn(probes, None)[1], {}, {}
        prm = rest.get("params", {}) if params else None
        (grads, param_grads), state = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(probes,
                                                                                        prm)
        return state, grads, param_grads or {}

    def measure(self, variables, x, label_key, plan: Plan) -> dict:
        order = order_fn(self.order)
        state, grads, param_grads = self._pass(
            variables, x, label_key, plan, [probe.NEED_COLLECTIONS[n] for n in plan.act_needs],
            probe.PROBES if plan.backward else None, plan.param_backward, plan.gns)
        out = {name: named(state.get(col, {}), key, order)
               for name, col, key in RECORDS if NEED_OF[name] in plan.act_needs}
        if plan.backward:
            out["grad"] = named(grads, probe.GRAD_KEY, order)
        if plan.gns:
            out["gns"] = named(grads, probe.GNS_KEY, order)
        if plan.param_backward:
            out["param_grad"] = named(probe.weight_grad_norms(param_grads), probe.PARAM_KEY,
                                      order)
        return out

    def pair(self, variables, xs, label_key, plan: Plan) -> dict:
        """The pair pass over ``xs = [x, x + s xi]`` (vmapped over :data:`probe.PAIR_AXIS`)."""
        order = order_fn(self.order)
        grads = metrics.PAIR_GRAD in plan.needs

        def one(x):
            state, g, _ = self._pass(variables, x, label_key, plan, [probe.PAIR],
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
                ctx.module.sow(probe.MOMENTS, OBSERVED, fn(y), init_fn=lambda: None,
                               reduce_fn=lambda _, v: v)
            return y

        with nn.intercept_methods(interceptor):
            out, state = self._apply(variables, x, mutable)
        return named(state.get(probe.MOMENTS, {}), OBSERVED, order_fn(self.order)), out


# the records of the main pass: (record name, tap collection, leaf key), and the need of each
RECORDS = (("moments", probe.MOMENTS, probe.MOMENTS_KEY), ("gram_hi", probe.GRAM, probe.HI_KEY),
            ("gram_lo", probe.GRAM, probe.LO_KEY), ("branch", probe.BRANCH, probe.BRANCH_KEY),
            ("token_hi", probe.TOKEN, probe.TOKEN_HI_KEY),
            ("token_lo", probe.TOKEN, probe.TOKEN_LO_KEY),
            ("max_abs", probe.MAX_ABS, probe.MAX_ABS_KEY),
            ("attention", probe.ATTENTION, probe.ATTENTION_KEY),
            ("attention_logits", probe.ATTENTION_LOGITS, probe.LOGITS_KEY))
NEED_OF = {"moments": metrics.MOMENTS, "gram_hi": metrics.GRAM, "gram_lo": metrics.GRAM,
            "branch": metrics.BRANCH, "token_hi": metrics.TOKEN, "token_lo": metrics.TOKEN,
            "max_abs": metrics.MAX_ABS, "attention": metrics.ATTENTION,
            "attention_logits": metrics.ATTENTION_LOGITS}


def _observing_attention(module, next_fun, args, kwargs):
    """Call a flax attention module with its ``attention_fn`` wrapped for this call only (the
    bound instance of this trace), so that its probabilities reach the attention tap."""
    fn = module.attention_fn
    record = lambda p, lg, m: probe.observe_attention(module, p, logits=lg, mask=m)  # noqa: E731
    object.__setattr__(module, "attention_fn", attention.observed(fn, record))
    try:
        return next_fun(*args, **kwargs)
    finally:
        object.__setattr__(module, "attention_fn", fn)


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
        mutable += [probe.MOMENTS, probe.BRANCH, probe.ATTENTION, probe.LOSSES]
        with nn.intercept_methods(record):
            _, state = module.apply(v, x, mutable=mutable, **kw)
        return (v.get(probe.PROBES, {}), state.get(probe.MOMENTS, {}),
                state.get(probe.BRANCH, {}), state.get(probe.ATTENTION, {}))

    probes, moments, branch, attn = jax.eval_shape(run, jax.random.key(0), x_abstract)
    explicit = (bool(jax.tree_util.tree_leaves((moments, branch))),
                bool(jax.tree_util.tree_leaves(probes)), bool(jax.tree_util.tree_leaves(attn)))
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
    acts, grads, attns = selectors.select(taps, named, explicit)
    check_attention(attns, dict(named))
    norms = tuple(p for p, m in named if norm_taps.observable(m))
    return LinenNet(module, acts, grads, tuple(p for p, _ in calls), tuple(apply_kwargs),
                    attns, norms)


def check_attention(attns, modules: dict) -> None:
    for path in attns:
        if not callable(getattr(modules[path], "attention_fn", None)):
            raise ValueError(f"taps: attention= selects {path!r} ({type(modules[path]).__name__}), "
                             "which has no attention_fn; for your own attention, call "
                             "sigprop.tap(self, probs, 'attention', logits=..., mask=...)")


__all__ = ["LinenNet", "linen_network", "ByValueOrIdentity", "RECORDS", "NEED_OF",
           "check_attention", "OBSERVED"]
