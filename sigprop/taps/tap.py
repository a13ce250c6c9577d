"""``sigprop.tap``: observe a value inside your own linen or nnx module (one entry point over the
two taps, :mod:`sigprop.taps.probe` for linen and :mod:`sigprop.taps.nnx_taps` for nnx)."""

from __future__ import annotations

import flax.linen as nn

from sigprop.taps import nnx_taps, probe


def tap(module, x, name: str, kind: str = "activation", *, logits=None, mask=None):
    """Observe ``x`` inside your own module; returns ``x`` unchanged.

    Its layer name is ``<module path>/<name>``. ``kind``: ``"activation"`` (the activation
    metrics, and on ``[batch, tokens, features]`` values the token metrics), ``"gradient"``
    (``grad_norm`` of ``d loss / d x``), ``"branch"`` (a residual branch's output:
    ``residual_variance``) or ``"attention"``: ``x`` are attention probabilities ``[batch...,
    heads, queries, keys]`` (``attention_entropy``); pass ``logits=`` (the scaled scores
    ``q.k / sqrt(d_head)`` before masking) for ``attention_logit_max`` and ``mask=`` (True where
    a query may attend to a key, broadcastable to ``x``; without it, the keys with a nonzero
    probability count as allowed). Outside ``sigprop.analyze`` it is the identity.

    - flax linen: call it in a ``@nn.compact`` method, ``module = self``: it adds a
      :class:`Tap` submodule called ``name``.
    - flax nnx: ``module = self``; the engine observes the value while it runs the model.

    Example: ``y = sigprop.tap(self, nn.relu(y), "relu")`` records after the activation, where
    [BB] measures.
    """
    if kind not in probe.KINDS:
        raise ValueError(f"kind={kind!r}; allowed: activation, gradient, branch, attention")
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name={name!r} must be a non-empty string without '/'")
    attention = {}
    if kind == "attention":
        attention = dict(logits=logits, mask=mask)
    elif logits is not None or mask is not None:
        raise ValueError(f"logits= and mask= are for kind='attention' taps; got kind={kind!r}")
    if isinstance(module, nn.Module):
        return probe.Tap(kind, name=name, parent=module)(x, **attention)
    # an nnx module: the engine's context on the module, if any
    return nnx_taps.tap(module, x, name, kind, **attention)
