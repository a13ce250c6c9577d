"""SepNorm: separate normalizers for the class token and for the other tokens (``norm="sepnorm"``).

This module owns :class:`SepNorm` and :func:`sepnorm_spec`, the transformer's ``norm="sepnorm"``
(Chen et al. 2023, On Separate Normalization in Self-supervised Transformers, NeurIPS 2023,
arXiv 2309.12931). It needs a class token at position 0
(``cls_token=True``, :func:`sigprop.transformer`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from sigprop.nn import normalizers

SEPNORM = "sepnorm"


class SepNorm(nn.Module):
    """``[B, T, D]`` tokens, token 0 the class token:
    ``y[:, 0] = N_cls(x[:, :1])``, ``y[:, 1:] = N_tok(x[:, 1:])``.

    ``N_cls`` (``cls_spec``, params under ``cls``) and ``N_tok`` (``token_spec``, under
    ``tokens``) are two per-token normalizers (``layout="tokens"``), each with its own statistics
    and affine: a batch statistic of ``N_cls`` is over the ``B`` class tokens, of ``N_tok`` over
    the ``B x (T - 1)`` other tokens (LayerNorm / RMSNorm, per token, compute the same statistic
    either way, with separate affines). ``layout`` must be ``"tokens"``.
    Chen et al. 2023, arXiv 2309.12931.
    """

    cls_spec: normalizers.NormSpec
    token_spec: normalizers.NormSpec
    layout: str = "tokens"

    @nn.compact
    def __call__(self, x):
        if self.layout != "tokens" or x.ndim != 3:
            raise ValueError(f"sepnorm: layout={self.layout!r}, inputs of shape {x.shape}; "
                             f"sepnorm takes tokens [B, T, D] (layout='tokens') only")
        if x.shape[1] < 2:
            raise ValueError(f"sepnorm: inputs of shape {x.shape}: needs the class token and at "
                             f"least one other token (T >= 2)")
        c = self.cls_spec.module(layout="tokens", name="cls")(x[:, :1])
        t = self.token_spec.module(layout="tokens", name="tokens")(x[:, 1:])
        return jnp.concatenate([c, t], axis=1)


def sepnorm_spec(allowed: tuple[str, ...], cls_norm: str = "layernorm",
                 token_norm: str = "layernorm", **options) -> normalizers.NormSpec:
    """The :class:`~sigprop.nn.normalizers.NormSpec` of ``sepnorm``: ``cls_norm`` and
    ``token_norm`` are names among ``allowed`` (the per-token activation normalizers); the other
    ``options`` (e.g. ``eps=``) go to both."""
    specs = []
    for param, name in (("cls_norm", cls_norm), ("token_norm", token_norm)):
        if not isinstance(name, str) or name.lower() not in allowed:
            raise ValueError(f"{param}={name!r}; allowed: {', '.join(allowed)}")
        specs.append(normalizers.spec(name, **options))
    cls_spec, token_spec = specs
    return normalizers.NormSpec(
        name=SEPNORM, factory=SepNorm,
        options=(("cls_spec", cls_spec), ("token_spec", token_spec)),
        batch_dependent=cls_spec.batch_dependent or token_spec.batch_dependent)


def check_width(spec: normalizers.NormSpec, width: int) -> None:
    """Raise ValueError if either of sepnorm's normalizers cannot act on ``width`` channels."""
    for _, s in spec.options:
        s.check_width(width)
