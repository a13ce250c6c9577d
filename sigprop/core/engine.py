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

This module owns the seed keys (:func:`seed_keys`, :mod:`sigprop.util.keys`), one item's
measurement (:func:`measure_item`), the spectral step (:func:`finish`), the jitted sharded core
and :func:`execute`. What a call computes and how results are named is
:mod:`sigprop.core.plan` (:class:`Plan`, :class:`Named`); models are adapted by a *network*,
:class:`LinenNet` or :class:`NnxNet` (:mod:`sigprop.core.adapters`,
:mod:`sigprop.core.nnx_adapter`), re-exported here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from sigprop import metrics
from sigprop.backend import devices, xla_cpu
from sigprop.core.adapters import LinenNet, linen_network
from sigprop.core.nnx_adapter import NnxNet, nnx_network
from sigprop.core.plan import DEFAULT_NOISE, Named, Plan, default_loss
from sigprop.util.keys import PAIR_NOISE_TAG, seed_keys, split_item, split_run


def _finite(flags, values):
    ok = flags > 0.5
    for v in values:
        ok = ok & jnp.isfinite(v)
    return ok


def measure_item(net, shape, dtype, key, x, variables, plan: Plan) -> dict:
    """Everything measured for one item: ``{metric or flag: Named [layers]}``.

    ``key`` splits into the data key (``x ~ N(0, 1)`` when ``x`` is None, and the pair pass's
    ``xi``), the init key and the label key, as in every earlier version of sigprop
    (:mod:`sigprop.util.keys`)."""
    k_data, k_run = split_item(key)
    if x is None:
        x = jax.random.normal(k_data, shape, jnp.float32)
    k_init, k_label = split_run(k_run)
    if variables is None:
        variables = net.init(k_init, x)
    records = net.measure(variables, x, k_label, plan)
    if plan.pair:
        noise = plan.noise or DEFAULT_NOISE
        xi = jax.random.normal(jax.random.fold_in(k_data, PAIR_NOISE_TAG), x.shape, jnp.float32)
        records.update(net.pair(variables, jnp.stack([x, x + noise * xi]), k_label, plan))
    return finish(records, plan)


@dataclasses.dataclass(frozen=True)
class _Axis:
    """A layer axis of the results: the kind of tap it needs (``what``, in errors), the
    ``records`` that carry its layer names (the first one present gives them; a record whose
    value is None has no tap), and the ``flagged`` ones among them, whose per-layer rows end
    with the taps' finite flag (``[..., finite]``, :mod:`sigprop.probe`)."""

    what: str
    records: tuple
    flagged: tuple


_NORM_TAP = "LayerNorm / RMSNorm (with affine parameters)"
_AXES = {metrics.LAYER: _Axis("activation", ("moments", "pair"), ("moments",)),
         metrics.GRAD_LAYER: _Axis("gradient", ("grad", "pair_grad"), ("grad", "pair_grad")),
         metrics.BRANCH_LAYER: _Axis("residual-branch", ("branch",), ("branch",)),
         metrics.ATTENTION_LAYER: _Axis("attention", ("attention", "attention_logits"),
                                        ("attention", "attention_logits")),
         metrics.PARAM_LAYER: _Axis("weight (dense / conv / einsum kernel or embedding)",
                                    ("param_grad",), ("param_grad",)),
         metrics.NORM_LAYER: _Axis(_NORM_TAP, ("gns",), ("gns",)),
         metrics.NORM_TOTAL: _Axis(_NORM_TAP, ("gns",), ("gns",))}


def finish(records: dict, plan: Plan) -> dict:
    """The spectral step: metrics from the records (:func:`sigprop.metrics.compute`), each with
    its layer names, plus each axis's finite flag (the taps' flag and every metric finite).

    A metric whose axis has no tap is an error, unless it is in ``plan.optional``."""
    wanted, sources = list(plan.metrics), {}
    for axis, spec in _AXES.items():
        uses = [m for m in wanted if metrics.REGISTRY[m].axis == axis]
        present = [r for r in spec.records if r in records and records[r].value is not None]
        if not uses:
            continue
        if present:
            sources[axis] = present
        elif all(m in plan.optional for m in uses):  # e.g. residual_variance without blocks
            wanted = [m for m in wanted if m not in uses]
        else:
            raise ValueError(f"taps: the model has no {_AXES[axis].what} tap, so "
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
        names = records[present[0]].names
        for m in on_axis:
            out[m] = Named(_names(axis, names), values[m])
        flags = [_flags(axis, records[r].value) for r in present if r in _AXES[axis].flagged]
        if flags:
            out[metrics.FLAGS[axis]] = Named(_names(axis, names), _finite(flags[0], [values[m]
                                                                       for m in on_axis]))
    return out


def _names(axis: str, names: tuple) -> tuple:
    """The names of ``axis``: the taps' (the one ``total`` of the sums over the normalizers)."""
    return (metrics.TOTAL_NAME,) if axis == metrics.NORM_TOTAL else names


def _flags(axis: str, record):
    """The taps' finite flags ``[..., layers]`` of a flagged record (``[..., 1]``: all of them,
    for the sums over the normalizers)."""
    flags = record[..., -1]
    return jnp.min(flags, axis=-1, keepdims=True) if axis == metrics.NORM_TOTAL else flags


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
