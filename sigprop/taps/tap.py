"""``sigprop.tap``: observe a value inside your own linen or nnx module (one entry point over the
two taps, :mod:`sigprop.taps.probe` for linen and :mod:`sigprop.taps.nnx_taps` for nnx)."""

from __future__ import annotations

import flax.linen as nn

from sigprop.taps import nnx_taps, probe


def tap(module, x, name: str, kind: str = "activation"):
    """Observe ``x`` inside your own module; returns ``x`` unchanged.

    Its layer name is ``<module path>/<name>``. ``kind``: ``"activation"`` (the activation
    metrics), ``"gradient"`` (``grad_norm`` of ``d loss / d x``) or ``"branch"`` (a residual
    branch's output: ``residual_variance``). Outside ``sigprop.analyze`` it is the identity.

    - flax linen: call it in a ``@nn.compact`` method, ``module = self``: it adds a
      :class:`Tap` submodule called ``name``.
    - flax nnx: ``module = self``; the engine observes the value while it runs the model.

    Example: ``y = sigprop.tap(self, nn.relu(y), "relu")`` records after the activation, where
    [BB] measures.
    """
    if kind not in probe.KINDS:
        raise ValueError(f"kind={kind!r}; allowed: activation, gradient, branch")
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name={name!r} must be a non-empty string without '/'")
    if isinstance(module, nn.Module):
        return probe.Tap(kind, name=name, parent=module)(x)
    # an nnx module: the engine's context on the module, if any
    return nnx_taps.tap(module, x, name, kind)
