"""What every model of the zoo shares: the normalizer wiring, the layer unit, scan stacks, the head."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from sigprop.nn import normalizers
from sigprop.nn.layers import (
    Activation,
    Conv,
    Dense,
    center_layer,
    check_activation,
    classifier_init,
)
from sigprop.taps import probe
from sigprop.taps.collections import KERNEL_KEYS

# every collection a zoo layer holds or records, stacked on a leading layer axis in nn.scan
SCAN_AXES = {"params": 0, KERNEL_KEYS: 0, probe.PROBES: 0, probe.PAIR_PROBES: 0, probe.LOSSES: 0,
             **{c: 0 for c in probe.TAP_COLLECTIONS}}


def resolve(norm, activation, norm_options: dict) -> tuple[normalizers.NormSpec, Any]:
    """The model's :class:`~sigprop.normalizers.NormSpec` and activation.

    ``activation=None`` takes the normalizer's pairing (FRN -> TLU, weightnorm -> scaled ReLU),
    else ReLU. EvoNorm replaces normalizer + activation, so it takes no ``activation=``.
    """
    spec = normalizers.spec(norm, **norm_options)
    if spec.activation == "identity":  # evonorm: the module sits in the activation slot
        if activation is not None:
            raise ValueError(
                f"norm={spec.name!r} replaces the activation; leave activation= unset "
                f"(got activation={activation!r})"
            )
        return spec, "replaced"
    if activation is None:
        activation = spec.activation or "relu"
    return spec, check_activation(activation)


def check_conv_impl(conv_impl) -> None:
    if conv_impl not in ("auto", "xla", "shift"):
        raise ValueError(f"conv_impl={conv_impl!r}; allowed: auto, xla, shift")


def norm_slot(spec, activation):
    """The module in the normalizer slot (identity when the normalizer replaces the activation)."""
    return normalizers.Identity() if activation == "replaced" else spec.module()


def act_slot(spec, activation):
    """The module in the activation slot (the EvoNorm layer when it replaces the activation)."""
    return spec.module() if activation == "replaced" else Activation(activation)


def affine_op(spec, features: int, *, conv: bool, stride: int = 1, kernel: int = 3,
              impl: str = "auto", lazy: bool = False) -> Callable:
    """The conv/dense of a layer, with the normalizer's weight transform and input centering."""
    if conv:
        op = Conv(features, stride=stride, kernel=kernel, weight=spec.weight, use_bias=spec.bias,
                  impl=impl)
    else:
        op = Dense(features, weight=spec.weight, use_bias=spec.bias, lazy=lazy)

    def apply(x):
        return op(center_layer(x) if spec.center_input else x)

    return apply


class Unit(nn.Module):
    """One layer of a non-residual net: conv/dense -> grad tap -> normalizer -> activation ->
    activation tap. Both taps carry this module's name (e.g. ``layer07``)."""

    features: int
    spec: normalizers.NormSpec
    activation: Any
    stride: int = 1
    conv: bool = True
    impl: str = "auto"
    lazy: bool = False  # dense only: see layers.kernel

    @nn.compact
    def __call__(self, x):
        y = affine_op(self.spec, self.features, conv=self.conv, stride=self.stride, impl=self.impl,
                      lazy=self.lazy)(x)
        y = probe.observe_grad(self, y)
        y = norm_slot(self.spec, self.activation)(y)
        y = act_slot(self.spec, self.activation)(y)
        return probe.observe_act(self, y)


def run_stack(block: nn.Module, x, length: int, remat: bool = False):
    """Apply ``block`` (a bound module named by :func:`sigprop.probe.scan_name`) ``length`` times
    with ``nn.scan``: params, taps and probes stacked on a leading layer axis.

    ``remat=True`` wraps each layer in ``jax.checkpoint`` (``nn.remat``): the backward pass keeps
    only each layer's input and recomputes the rest (one more forward of the network, minus the
    activation metrics, which the backward pass does not need), so memory per layer is one
    activation instead of everything the layer's backward uses."""
    body = lambda mdl, carry, _: (mdl(carry), None)  # noqa: E731
    if remat:
        body = nn.remat(body, prevent_cse=False)  # inside a scan, CSE cannot undo the remat
    scanned = nn.scan(
        body,
        variable_axes=SCAN_AXES,
        split_rngs={"params": True},
        length=length,
    )
    y, _ = scanned(block, x, None)
    return y


def runs(items: list) -> list[tuple[int, int]]:
    """``(start, length)`` of the runs of equal consecutive items."""
    out, start = [], 0
    for i in range(1, len(items) + 1):
        if i == len(items) or items[i] != items[start]:
            out.append((start, i - start))
            start = i
    return out


def head(x, n_classes: int, center: bool = False):
    """Global average pool over the spatial axes, then the dense classifier (zero bias).

    ``center=True`` (the normalizers that center every affine op's input: prelayernorm,
    preregnorm) subtracts each sample's feature mean from the classifier's input too, as
    PreLayerNorm's definition asks of every affine layer; [U]'s appendix ties the Hessian's
    conditioning to centering at the logits layer."""
    if x.ndim > 2:
        x = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
    if center:
        x = center_layer(x)
    return Dense(n_classes, use_bias=True, kernel_init=classifier_init, name="classifier")(x)


def check_image_inputs(shape, what: str) -> None:
    if len(shape) != 4:
        raise ValueError(
            f"inputs: {what} expects images [batch, height, width, channels]; got shape {tuple(shape)}"
        )
    if min(shape[1:]) < 1:
        raise ValueError(f"inputs: every dimension must be >= 1; got shape {tuple(shape)}")
