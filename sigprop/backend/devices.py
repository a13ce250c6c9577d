"""Spreading the seed / grid axis over devices with ``jax.sharding``.

Every batched computation in sigprop (``analyze``'s seeds, ``sweep``'s grid points x seeds) has one
leading axis of independent work. :func:`shard_leading` places that axis over a 1-D
:class:`~jax.sharding.Mesh` of all devices, padding it to a multiple of the device count; the
engine's program runs under ``jax.shard_map`` over that axis, so each device runs the vmapped
computation on its own items and no data crosses devices (``tests/test_sharding.py`` checks the
compiled program has no collective). Results are identical to a single device: every item along the axis is computed from its
own key, and the padding items are dropped.

Multi-host (several processes, e.g. a TPU pod slice or several GPU hosts): call
``jax.distributed.initialize()`` in every process before anything else, then run the same sigprop
call in every process. :func:`mesh` spans ``jax.devices()`` (all processes' devices), the leading
axis is built with :func:`jax.make_array_from_callback` so that each process supplies only its own
shard, and :func:`to_host` gathers the result to every process
(``jax.experimental.multihost_utils.process_allgather``).

On a CPU-only machine, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set before jax is
imported) makes N host devices, which is how the tests exercise this module.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "points"


def mesh(devices=None) -> Mesh:
    """A 1-D mesh named :data:`AXIS` over ``devices`` (default: all devices of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,))


def padded_size(n: int, m: Mesh) -> int:
    """``n`` rounded up to a multiple of the mesh size."""
    size = m.devices.size
    return int(math.ceil(n / size) * size)


def shard_leading(array: np.ndarray, m: Mesh) -> jax.Array:
    """Place a host array's leading axis over the mesh (already padded to a multiple of its size).

    Built with :func:`jax.make_array_from_callback`, so under ``jax.distributed`` each process
    only materializes the shards of its own devices.
    """
    array = np.asarray(array)
    if array.shape[0] % m.devices.size:
        raise ValueError(f"leading axis {array.shape[0]} is not a multiple of the "
                         f"{m.devices.size} devices; pad it with padded_size()")
    sharding = NamedSharding(m, PartitionSpec(AXIS))
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def replicated(m: Mesh) -> NamedSharding:
    return NamedSharding(m, PartitionSpec())


def leading(m: Mesh) -> NamedSharding:
    return NamedSharding(m, PartitionSpec(AXIS))


def to_host(tree):
    """Fetch a (possibly sharded) pytree of arrays to numpy on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree_util.tree_map(np.asarray, tree)
