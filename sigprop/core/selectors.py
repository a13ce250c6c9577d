"""Which submodules of a user's model are observed: :class:`Taps` and its selectors.

A selector is a module class, a tuple of classes, a glob over the module path (``"block*/norm*"``,
``fnmatch`` rules: ``*`` also crosses ``/``) or a predicate ``(path, module) -> bool``; ``False``
selects nothing. A path is the module's names from the model's root joined by ``/`` (flax linen:
``ResNetBlock_0/Conv_1``; flax nnx: attribute names and list indices, ``blocks/0/norm1``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

import flax.linen as nn
from flax import nnx

from sigprop.nn import normalizers
from sigprop.taps.attention import ATTENTION_CLASSES

# Defaults: activation metrics at the output of every normalization module ...
NORM_CLASSES = (
    nn.BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.InstanceNorm,
    nnx.BatchNorm, nnx.LayerNorm, nnx.GroupNorm, nnx.RMSNorm, nnx.InstanceNorm,
    normalizers.Normalizer, normalizers.FRN, normalizers.EvoNormS0, normalizers.EvoNormB0,
    normalizers.DyT,
)
# ... gradient norms at the output of every dense / conv / einsum (but the last one called)
AFFINE_CLASSES = (
    nn.Dense, nn.DenseGeneral, nn.Conv, nn.ConvTranspose, nn.Einsum,
    nnx.Linear, nnx.LinearGeneral, nnx.Conv, nnx.ConvTranspose, nnx.Einsum,
)


def check_selector(selector, what: str):
    """Validate one selector; return it (a tuple for a list of classes)."""
    if selector is None or selector is False:
        return selector
    if isinstance(selector, type):
        return selector
    if isinstance(selector, (tuple, list)) and selector and all(isinstance(c, type)
                                                                  for c in selector):
        return tuple(selector)
    if isinstance(selector, str) and selector:
        return selector
    if callable(selector):
        return selector
    raise ValueError(
        f"taps: {what}={selector!r} is not a selector; allowed: a module class, a tuple of "
        "classes, a glob over the module path (e.g. 'block*/norm*'), a predicate "
        "(path, module) -> bool, or False (none)")


@dataclasses.dataclass(frozen=True)
class Taps:
    """Which submodules ``sigprop.analyze`` observes in a user's model.

    Args:
      activations: where activation metrics are taken (at the module's output). ``None``: the
        default, every normalization module (flax linen and nnx BatchNorm, LayerNorm,
        GroupNorm, RMSNorm, InstanceNorm, and sigprop's normalizers).
      gradients: where gradient norms are taken (``d loss / d output``). ``None``: the default,
        every Dense / DenseGeneral / Conv / ConvTranspose / Einsum (linen) and Linear /
        LinearGeneral / Conv / ConvTranspose / Einsum (nnx) except the last one called, the
        classifier.

      attention: where attention metrics are taken: flax attention modules whose
        ``attention_fn`` is observed (:mod:`sigprop.taps.attention`). ``None``: the default,
        every linen ``MultiHeadDotProductAttention`` (and subclasses) and nnx
        ``MultiHeadAttention``.

    Each is a selector (see the module doc); pass your own normalization class to observe it.
    Values observed with :func:`sigprop.tap` inside a model are always recorded besides (for
    your own attention: ``sigprop.tap(self, probs, "attention", logits=..., mask=...)``).
    """

    activations: Any = None
    gradients: Any = None
    attention: Any = None

    def __post_init__(self):
        for what in ("activations", "gradients", "attention"):
            object.__setattr__(self, what, check_selector(getattr(self, what), what))


def matches(selector, path: str, module) -> bool:
    """Whether ``selector`` selects ``module`` at ``path``."""
    if selector is None or selector is False:
        return False
    if isinstance(selector, (type, tuple)):
        return isinstance(module, selector)
    if isinstance(selector, str):
        return fnmatch.fnmatchcase(path, selector)
    return bool(selector(path, module))


_DEFAULTS = {"activations": NORM_CLASSES, "gradients": AFFINE_CLASSES,
             "attention": ATTENTION_CLASSES}


def select(taps: Taps | None, calls: list[tuple[str, Any]], explicit: tuple):
    """``(activation paths, gradient paths, attention paths)`` selected among the module calls
    ``[(path, module)]`` (in call order, the root's path ``""`` excluded).

    A selector left at None takes the default, unless the model has sigprop taps of its own of
    that kind (``explicit = (activation, gradient, attention)``: a zoo model, or
    :func:`sigprop.tap` calls), which then stand alone. A selector given explicitly that matches
    nothing is an error listing the paths seen."""
    seen = [(p, m) for p, m in calls if p]
    taps = taps or Taps()
    explicit = tuple(explicit) + (False,) * (3 - len(explicit))
    out = []
    for what, own in zip(("activations", "gradients", "attention"), explicit):
        selector = getattr(taps, what)
        if selector is None and own:
            out.append(())
            continue
        if selector is None:
            paths = [p for p, m in seen if isinstance(m, _DEFAULTS[what])]
            if what == "gradients":
                paths = paths[:-1]
        else:
            paths = [p for p, m in seen if matches(selector, p, m)]
            if selector is not False and not paths:
                listing = ", ".join(f"{p} ({type(m).__name__})" for p, m in seen[:40])
                raise ValueError(f"taps: {what}={selector!r} matches no module of the model; "
                                 f"its module paths: {listing}")
        out.append(tuple(dict.fromkeys(paths)))
    return tuple(out)


__all__ = ["Taps", "matches", "select", "NORM_CLASSES", "AFFINE_CLASSES"]
