"""Fully connected network: ``depth`` x (dense -> normalizer -> activation), then a classifier."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from sigprop.nn import normalizers
from sigprop.nn.common import Unit, head, resolve, run_stack
from sigprop.taps import probe
from sigprop.util.checks import check_positive


def layer_pattern(depth: int) -> str:
    """``layer{:02d}`` (more digits past 100 layers)."""
    return "layer{:0%dd}" % max(2, len(str(depth - 1)))


class MLP(nn.Module):
    """``depth`` dense layers of ``width`` units ([U] Figure 1's fully connected ReLU net).

    Layer ``i`` is named ``layer{i:02d}``. Layers 1..depth-1 are identical and run as one
    ``nn.scan`` stack (``scan=False`` unrolls them into the same names and params).
    Inputs ``[batch, ...]`` are flattened to ``[batch, features]``.
    """

    depth: int
    width: int
    spec: normalizers.NormSpec
    activation: Any = "relu"
    n_classes: int = 100
    scan: bool = True
    remat: bool = False
    lazy_weights: bool = False

    def check_inputs(self, shape) -> None:
        if len(shape) < 2:
            raise ValueError(f"inputs: mlp expects [batch, features...]; got shape {tuple(shape)}")

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        kw = dict(features=self.width, spec=self.spec, activation=self.activation, conv=False,
                  lazy=self.lazy_weights)
        pat = layer_pattern(self.depth)
        x = Unit(**kw, name=pat.format(0))(x)
        if self.depth > 1:
            if self.scan:
                x = run_stack(Unit(**kw, name=probe.scan_name(pat, 1)), x, self.depth - 1,
                              remat=self.remat)
            else:
                for i in range(1, self.depth):
                    x = Unit(**kw, name=pat.format(i))(x)
        return head(x, self.n_classes, self.spec.center_input)


def mlp(depth: int, width: int, *, norm="none", activation=None, n_classes: int = 100,
        scan: bool = True, remat: bool = False, lazy_weights: bool = False,
        **norm_options) -> MLP:
    """A fully connected net of ``depth`` x (dense(width) -> ``norm`` -> ``activation``).

    Args:
      depth: number of hidden layers (>= 1). width: units per layer (>= 1).
      norm: a name from ``sigprop.normalizers.names()`` or a module factory.
      activation: ``None`` for the normalizer's pairing (else ReLU), a name or a callable.
      n_classes: classifier outputs. scan: run the identical layers as one ``nn.scan``.
      remat: recompute each scanned layer in the backward pass (``jax.checkpoint``) instead of
        keeping what its backward uses: memory per layer is one activation (very deep nets).
      lazy_weights: the ``'params'`` of the hidden layers hold each kernel's RNG key; the kernel
        (the same values) is drawn when the layer runs, and with ``remat`` again in the backward
        pass, so no ``width x width`` kernel is stored (depth 1000, width 1024: 4 GiB less).
      **norm_options: passed to the normalizer (e.g. ``group_size=4``).
    """
    check_positive(depth=depth, width=width)
    check_positive(n_classes=n_classes)
    spec, act = resolve(norm, activation, norm_options)
    spec.check_width(width)
    return MLP(depth=depth, width=width, spec=spec, activation=act, n_classes=n_classes, scan=scan,
               remat=bool(remat), lazy_weights=bool(lazy_weights))
