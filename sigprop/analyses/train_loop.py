"""The training program of :func:`sigprop.train.train`: one jitted ``lax.scan`` over records,
each a record then a ``fori_loop`` of training steps, vmapped over (seed, rate) items.

Pure functions of a static :class:`Config` and device arrays; the key derivations and what
each record holds are documented in :mod:`sigprop.train`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sigprop.analyses import curvature
from sigprop.backend import xla_cpu
from sigprop.core import engine
from sigprop.core.objective import Objective
from sigprop.core.plan import Plan
from sigprop.util.keys import EPOCH_TAG, LAMBDA_MAX_TAG


class _State(NamedTuple):
    params: Any
    rest: Any
    opt: Any
    perm: jax.Array  # the current epoch's permutation of the training set


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything static about one training program (each config compiles its own)."""

    steps: int
    batch_size: int
    record_every: int
    optimizer: Any  # a factory rate -> GradientTransformation, or a GradientTransformation
    plan: Plan | None  # the analyze metrics (loss=None: the probe labels' loss is set inside)
    confusion: int  # minibatches per record (gradient cosines when >= 2)
    lanczos: int  # lambda_max's Lanczos order (0: not recorded)
    held_chunks: int  # held-out batches per record (0: no held-out set)
    precision: str = "highest"
    record: bool = True  # False: no record at all (the benchmark's baseline)
    extra: Callable | None = None  # (net, variables, x) -> Named [layers, ...] (coord_check)

    @property
    def records(self) -> int:
        return -(-self.steps // self.record_every) + 1

    def record_steps(self) -> tuple[int, ...]:
        return tuple(min(r * self.record_every, self.steps) for r in range(self.records))


def _optimizer(cfg: Config, rate):
    opt = cfg.optimizer
    return opt if isinstance(opt, optax.GradientTransformation) else opt(rate)


def variables(net, params, rest, probes):
    """The full variables ``measure_item`` takes (linen: with the zero gradient probes)."""
    return net.merge(params, rest, probes)


def _ce_and_accuracy(out, y):
    loss = optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
    return loss, jnp.mean((jnp.argmax(out, axis=-1) == y).astype(jnp.float32))


def _cosines(grads):
    """``(min, mean)`` over pairs ``i < j`` of ``<g_i, g_j> / (|g_i| |g_j|)``, ``grads [K, P]``."""
    g = lax.dot_general(grads, grads, (((1,), (1,)), ((), ())),
                        precision=lax.Precision.HIGHEST)
    norms = jnp.sqrt(jnp.diagonal(g))
    cos = g / (norms[:, None] * norms[None, :])
    iu = np.triu_indices(grads.shape[0], 1)
    pairs = cos[iu]
    return jnp.min(pairs), jnp.mean(pairs)


def _pieces(net, cfg: Config, data: dict):
    """``(init, interval)`` for one item (one seed at one rate)."""
    obj = Objective(net)
    images, labels = data["images"], data["labels"]
    px, py = data["probe_x"], data["probe_y"]
    n, b, k = images.shape[0], cfg.batch_size, cfg.record_every
    per_epoch = n // b
    probes = None
    if cfg.plan is not None:
        probes = net.zero_probes(jax.ShapeDtypeStruct(px.shape, px.dtype))
    plan = None
    if cfg.plan is not None:  # the gradient metrics' loss: cross-entropy on the probe labels
        plan = dataclasses.replace(cfg.plan, loss=lambda out, _key: _ce_and_accuracy(out, py)[0])

    def init(key, rate, given):
        v = obj.init(key, px) if given is None else given
        params, rest = obj.split(v)
        return _State(params, rest, _optimizer(cfg, rate).init(params), jnp.zeros(n, jnp.int32))

    def epoch_perm(key, epoch):
        epoch_key = jax.random.fold_in(jax.random.fold_in(key, EPOCH_TAG), epoch)
        return jax.random.permutation(epoch_key, n).astype(jnp.int32)

    def grad_of(params, rest, idx):
        (loss, (out, new_rest)), g = jax.value_and_grad(obj.loss, has_aux=True)(
            params, rest, images[idx], labels[idx])
        return loss, out, new_rest, g

    def current_perm(state, t, key):
        """Step ``t``'s epoch permutation: drawn at the epoch's first step, then carried."""
        return lax.cond(t % per_epoch == 0, lambda: epoch_perm(key, t // per_epoch),
                        lambda: state.perm)

    def update(state, perm, rate, g, new_rest):
        updates, opt = _optimizer(cfg, rate).update(g, state.opt, state.params)
        return _State(optax.apply_updates(state.params, updates), new_rest, opt, perm)

    def step(t, state, key, rate):
        perm = current_perm(state, t, key)
        idx = lax.dynamic_slice_in_dim(perm, (t % per_epoch) * b, b)
        _, _, new_rest, g = grad_of(state.params, state.rest, idx)
        return update(state, perm, rate, g, new_rest)

    def stream_batches(state, key, s):
        """``([K, B] indices of the minibatches of steps s, ..., s + K - 1, step s's epoch
        permutation)``: the carried permutation, drawn at an epoch's first step, and the next
        epoch's where the K steps cross into it (K <= batches per epoch: two epochs at most)."""
        perm = current_perm(state, s, key)
        crosses = s % per_epoch + cfg.confusion > per_epoch
        nxt = lax.cond(crosses, lambda: epoch_perm(key, s // per_epoch + 1), lambda: perm)

        def one(t):
            p = jnp.where(t // per_epoch == s // per_epoch, perm, nxt)
            return lax.dynamic_slice_in_dim(p, (t % per_epoch) * b, b)

        return jax.vmap(one)(s + jnp.arange(cfg.confusion)), perm

    def record(state, key, r, s):
        """The record at step ``s``, and what step ``s`` then uses: its epoch permutation, its
        minibatch's gradient and new ``rest``."""
        out = {}
        if plan is not None:
            v = variables(net, state.params, state.rest, probes)
            out.update(engine.measure_item(net, px.shape, px.dtype, key, px, v, plan))
        if cfg.extra is not None:
            out["coordinates"] = cfg.extra(net, variables(net, state.params, state.rest, None),
                                           px)
        idx, perm = stream_batches(state, key, s)

        def one(ix):
            loss, o, new_rest, g = grad_of(state.params, state.rest, ix)
            ce, acc = _ce_and_accuracy(o, labels[ix])
            return ce, loss - ce, acc, g, new_rest

        ces, regs, accs, grads, rests = jax.vmap(one)(idx)
        # the cross-entropy and the model's extra loss terms (regnorm's) are recorded apart
        out["train_loss"], out["train_accuracy"] = jnp.mean(ces), jnp.mean(accs)
        out["train_regularizer"] = jnp.mean(regs)
        if cfg.confusion >= 2:
            flat = jax.vmap(lambda g: jax.flatten_util.ravel_pytree(g)[0])(grads)
            out["gradient_cosine_min"], out["gradient_cosine_mean"] = _cosines(flat)
        if cfg.held_chunks:
            def held(xy):
                o = obj.apply(state.params, state.rest, xy[0])[0]
                return _ce_and_accuracy(o, xy[1])

            hl, ha = lax.map(held, (data["held_x"], data["held_y"]))
            out["held_out_loss"], out["held_out_accuracy"] = jnp.mean(hl), jnp.mean(ha)
        if cfg.lanczos:
            f, w0 = curvature.flat_loss(obj, state.params, state.rest, px, py)
            start = jax.random.fold_in(jax.random.fold_in(key, LAMBDA_MAX_TAG), r)
            out["lambda_max"] = curvature.lambda_max(f, w0, start, cfg.lanczos)
        first = jax.tree_util.tree_map(lambda a: a[0], (grads, rests))
        return out, (perm, *first)

    def interval(state, key, rate, r):
        s = r * k
        count = jnp.clip(cfg.steps - s, 0, k)
        if not cfg.record:
            return lax.fori_loop(0, count, lambda j, st: step(s + j, st, key, rate), state), {}
        rec, (perm, g, new_rest) = record(state, key, r, jnp.minimum(s, cfg.steps))
        state = lax.cond(count > 0, lambda: update(state, perm, rate, g, new_rest),
                         lambda: state)
        state = lax.fori_loop(1, jnp.maximum(count, 1),
                              lambda j, st: step(s + j, st, key, rate), state)
        return state, rec

    return init, interval


def _batched(net, cfg, keys, rates, given, data):
    """The vmapped ``(init(), interval(state, r))`` over items, one item per (seed, rate):
    one vmap level (the metrics' float64 branches are traced inside their own vmap rules,
    which a second, outer vmap would re-batch outside float64)."""
    init, interval = _pieces(net, cfg, data)
    s, nr = keys.shape[0], rates.shape[0]
    item_keys, item_rates = jnp.repeat(keys, nr, axis=0), jnp.tile(rates, s)
    item_given = None if given is None else jax.tree_util.tree_map(
        lambda a: jnp.repeat(a, nr, axis=0), given)
    vinit = jax.vmap(init, (0, 0, None if given is None else 0))
    vint = jax.vmap(interval, (0, 0, 0, None))
    return (lambda: vinit(item_keys, item_rates, item_given)), (
        lambda state, r: vint(state, item_keys, item_rates, r))


_STATIC = ("net", "cfg", "impl")


def _whole_fn(net, cfg, impl, keys, rates, given, data):
    keys = jax.random.wrap_key_data(keys, impl=impl)
    with jax.default_matmul_precision(cfg.precision):
        init, interval = _batched(net, cfg, keys, rates, given, data)
        return lax.scan(interval, init(), jnp.arange(cfg.records))


def _init_fn(net, cfg, impl, keys, rates, given, data):
    keys = jax.random.wrap_key_data(keys, impl=impl)
    with jax.default_matmul_precision(cfg.precision):
        return _batched(net, cfg, keys, rates, given, data)[0]()


def _interval_fn(net, cfg, impl, keys, rates, given, data, state, r):
    keys = jax.random.wrap_key_data(keys, impl=impl)
    with jax.default_matmul_precision(cfg.precision):
        return _batched(net, cfg, keys, rates, given, data)[1](state, r)


_whole = xla_cpu.fast_rng(jax.jit(_whole_fn, static_argnames=_STATIC))
_init = xla_cpu.fast_rng(jax.jit(_init_fn, static_argnames=_STATIC))
_interval = xla_cpu.fast_rng(jax.jit(_interval_fn, static_argnames=_STATIC,
                                     donate_argnames=("state",)))


def execute(net, cfg, keys, rates, given, data, progress=None):
    """Run the program; returns ``(final state [S, Rt, ...] on the device, records {name:
    numpy [S, Rt, R+1, ...]})``. ``progress(n)``: one call per record interval instead of
    one scan, ``progress`` told the steps done after each."""
    impl = str(jax.random.key_impl(keys))
    args = dict(net=net, cfg=cfg, impl=impl, keys=jax.random.key_data(keys), rates=rates,
                given=given, data=data)
    s, nr = keys.shape[0], rates.shape[0]
    if progress is None:
        state, recs = _whole(**args)  # records [R+1, items, ...]
    else:
        state, parts = _init(**args), []
        for r in range(cfg.records):
            state, rec = _interval(**args, state=state, r=jnp.int32(r))
            parts.append(rec)
            done = min(cfg.record_every, max(cfg.steps - r * cfg.record_every, 0))
            if done:
                progress(done)
        recs = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *parts)
    host = jax.tree_util.tree_map(
        lambda a: np.moveaxis(np.asarray(a).reshape((a.shape[0], s, nr) + a.shape[2:]), 0, 2),
        recs)
    state = jax.tree_util.tree_map(lambda a: a.reshape((s, nr) + a.shape[1:]), state)
    return state, host


__all__ = ["Config", "execute", "variables"]
