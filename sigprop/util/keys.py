"""Every random key sigprop derives: the per-seed keys, the splits of one item's key, and a named
tag for every ``fold_in``.

Seed ``i`` of a call uses ``fold_in(key, i)`` (:func:`seed_keys`). An item's key (one seed of one
model) splits into the data key and the run key (:func:`split_item`), the run key into the init
key and the label key (:func:`split_run`), as in every earlier version of sigprop:

    key -> (k_data, k_run),    k_run -> (k_init, k_label)

``analyze`` draws ``x ~ N(0, 1)`` with ``k_data`` (when no inputs are given), initializes with
``k_init`` and draws the loss's labels with ``k_label``; the Hessian and training start from the
same weights (:func:`init_key`). Other streams hang off a key by ``fold_in`` with a tag below,
so that they never collide with these splits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# fold_in tags (each of a different key, see its comment; equal numbers do not collide)
PAIR_NOISE_TAG = 1  # of an item's k_data: the pair pass's noise xi (x + s xi)
EPOCH_TAG = 1  # of a seed key (training): then fold_in(., epoch) draws the epoch's permutation
LAMBDA_MAX_TAG = 3  # of a seed key (training): then fold_in(., record) starts lambda_max's Lanczos
PROBE_TAG = 0x4E55  # of a seed key (Hessian): the Lanczos probes (apart from data/init/labels)


def seed_keys(key, seeds: int):
    """Seed ``i`` uses ``fold_in(key, i)``: its numbers do not depend on how many seeds run."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(seeds))


def split_item(key):
    """``(k_data, k_run)`` of an item's key (one seed of one model)."""
    k_data, k_run = jax.random.split(key)
    return k_data, k_run


def split_run(k_run):
    """``(k_init, k_label)`` of an item's run key."""
    k_init, k_label = jax.random.split(k_run)
    return k_init, k_label


def init_key(key):
    """The key from which ``analyze`` initializes an item's network, given the item's key."""
    return split_run(split_item(key)[1])[0]


__all__ = ["PAIR_NOISE_TAG", "EPOCH_TAG", "LAMBDA_MAX_TAG", "PROBE_TAG", "seed_keys",
           "split_item", "split_run", "init_key"]
