"""Taps: where activations and gradients are observed inside a network.

- :mod:`~sigprop.taps.collections`: the names of the collections and records taps use.
- :mod:`~sigprop.taps.probe`: the flax linen taps (recording, gradient probes) and the naming of
  layers (``nn.scan`` stacks, call order).
- :mod:`~sigprop.taps.nnx_taps`: the same for flax nnx modules, observed on a copy.
- :mod:`~sigprop.taps.tap`: :func:`tap`, the user's entry point for either.

Selecting which submodules of a user's model are tapped is :mod:`sigprop.core.selectors`.
"""

from sigprop.taps.tap import tap

__all__ = ["tap"]
