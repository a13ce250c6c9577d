"""Closed forms and mean-field maps of wide, randomly initialized networks (science.md 3, 9-11).

Pure numpy functions, no model code: the numbers sigprop's measurements are compared with.

- :func:`relu_correlation_map`, :func:`relu_post_activation_cosine`: the arc-cosine map of a
  He-initialized ReLU layer (claim 9).
- :func:`variance_map`, :func:`correlation_map`: the mean-field length and correlation maps of any
  elementwise activation, by quadrature; :func:`iterate` runs a map over depth.
- :func:`bn_gradient_explosion_rate`: growth of the squared gradient norm per BatchNorm layer
  (claim 10).
- :func:`resnet_second_moment`: the residual stream's second moment per block (claim 11).
- :func:`groupnorm_rank_bound`: the trend of [BB]'s rank bound (claim 3).

Notation: ``z, z1, z3 ~ N(0, 1)`` independent; ``E`` is the Gaussian expectation; ``phi`` the
activation. "Cosine" is the uncentered ratio ``<a, b> / (|a| |b|)`` (what sigprop's
``cosine_similarity`` metric averages over pairs of samples), not a Pearson correlation.

Quadrature. Gaussian expectations are computed with Gauss-Legendre rules on ``[-10, 10]``
(truncation error ``P(|z| > 10) = 1.5e-23``), split at the points where an argument of ``phi``
crosses 0. ReLU-like activations have a kink there, and a Gauss-Hermite rule (``hermegauss``),
which assumes a smooth integrand, converges only like ``1 / points`` across a kink: for the ReLU
correlation map at ``c = 0`` a 200 x 200 Gauss-Hermite product rule is off by 1.3e-3 (and numpy's
``hermegauss`` overflows beyond ~300 points), while the split Gauss-Legendre rule with 64 points
per piece is exact to ~1e-14. The split rule therefore assumes that ``phi`` is smooth except at 0,
as every named activation here is; a callable with a kink elsewhere is integrated less accurately.

Activations. The models' named activations are defined once, in jax, in :mod:`sigprop.nn.layers`
(``ACTIVATIONS``), with the scaled ReLU's constants (``SCALED_RELU_GAIN``,
``SCALED_RELU_SHIFT``), which this module imports: they are plain floats, the one thing both sides
can share bit for bit. :data:`NUMPY_ACTIVATIONS` holds the numpy form of each model activation,
and a few more: these expectations are float64 quadratures, which the models' float32 jax
functions would round (and jax's exact ``gelu`` is not scipy's ``erf``), and numpy keeps the
functions here free of jax. ``tests/test_theory.py`` checks that every model activation has a
numpy form here and that the two agree.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Callable

import numpy as np
from numpy.polynomial.legendre import leggauss

from sigprop.nn.layers import SCALED_RELU_GAIN, SCALED_RELU_SHIFT

_Z_MAX = 10.0  # Gaussian integrals are truncated to [-10, 10]
_POINTS = 64  # Gauss-Legendre points per piece
_C_TOL = 1e-6  # cosines outside [-1 - tol, 1 + tol] are errors; inside, rounding, clipped

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_LEAKY_SLOPE = 0.01  # jax.nn.leaky_relu's default


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _gelu(x):
    from scipy.special import (
        erf,  # scipy is a jax dependency; imported only when needed
    )

    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


NUMPY_ACTIVATIONS: dict[str, Callable] = {
    "relu": lambda x: np.maximum(x, 0.0),
    "leaky_relu": lambda x: np.where(x > 0, x, _LEAKY_SLOPE * x),
    "identity": lambda x: x,
    "linear": lambda x: x,
    "tanh": np.tanh,
    "gelu": _gelu,
    "swish": lambda x: x * _sigmoid(x),
    "silu": lambda x: x * _sigmoid(x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
    "sigmoid": _sigmoid,
    "softplus": lambda x: np.logaddexp(0.0, x),
    "scaled_relu": lambda x: SCALED_RELU_GAIN * (np.maximum(x, 0.0) - SCALED_RELU_SHIFT),
}
"""The numpy forms of the named activations: every one of ``sigprop.nn.layers.ACTIVATIONS`` (the
models' own), and more (see the module doc)."""
ACTIVATION_NAMES = tuple(NUMPY_ACTIVATIONS)
"""Activations known by name: ``gelu`` is the exact ``x Phi(x)``; ``swish`` = ``silu`` =
``x sigmoid(x)``; ``elu`` has alpha = 1; ``selu`` the standard constants; ``leaky_relu`` slope 0.01
(pass a callable for another slope); ``scaled_relu`` = ``sqrt(2 pi / (pi - 1)) (relu(x) -
1 / sqrt(2 pi))`` (sigprop's weightnorm pairing); ``linear`` = ``identity``."""


# --------------------------------------------------------------------------------------------
# Validation


def _activation(activation) -> Callable:
    if callable(activation) and not isinstance(activation, str):
        return activation
    if isinstance(activation, str) and activation in NUMPY_ACTIVATIONS:
        return NUMPY_ACTIVATIONS[activation]
    raise ValueError(f"activation={activation!r}; allowed: {', '.join(ACTIVATION_NAMES)} "
                     "or a callable acting elementwise on numpy arrays")


def _real(name: str, value, *, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite real number")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise ValueError(f"{name}={value!r} must be {'>' if strict else '>='} {minimum}")
    return float(value)


def _int(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def _variances(name: str, q, *, strict: bool) -> np.ndarray:
    q = np.asarray(q, dtype=float)
    bad = ~np.isfinite(q) | (q <= 0 if strict else q < 0)
    if bad.any():
        raise ValueError(f"{name} must be finite and {'> 0' if strict else '>= 0'}; "
                         f"got {q[bad].flat[0]!r}")
    return q


def _cosines(name: str, c) -> np.ndarray:
    c = np.asarray(c, dtype=float)
    outside = np.abs(c) > 1 + _C_TOL
    if outside.any():
        raise ValueError(f"{name} must lie in [-1, 1] (a cosine); got {c[outside].flat[0]!r}")
    return np.clip(c, -1.0, 1.0)


def _scalar_if_0d(x: np.ndarray):
    return x[()] if x.ndim == 0 else x


# --------------------------------------------------------------------------------------------
# Quadrature


@functools.lru_cache(maxsize=8)
def _legendre(points: int):
    t, w = leggauss(points)
    t.setflags(write=False)
    w.setflags(write=False)
    return t, w


def _gaussian_rule(breaks: np.ndarray, points: int):
    """Nodes ``x`` and weights ``w`` with ``sum(w f(x)) ~= E[f(z)]`` for ``f`` smooth between
    consecutive ``breaks`` (``[..., m]``, ascending, from ``-_Z_MAX`` to ``_Z_MAX``); the weights
    include the standard normal density. Shapes ``[..., (m - 1) * points]``."""
    t, w = _legendre(points)
    lo, hi = breaks[..., :-1, None], breaks[..., 1:, None]
    x = 0.5 * (lo + hi) + 0.5 * (hi - lo) * t
    wx = 0.5 * (hi - lo) * w * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    shape = breaks.shape[:-1] + (-1,)
    return x.reshape(shape), wx.reshape(shape)


def _rule_1d(points: int):
    """The rule for ``E[f(z)]`` with ``f`` smooth except at 0."""
    return _gaussian_rule(np.array([-_Z_MAX, 0.0, _Z_MAX]), points)


def _check_points(points) -> int:
    return _int("points", points, minimum=2)


def _eval(phi: Callable, x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", under="ignore"):
        y = np.asarray(phi(x), dtype=float)
    if y.shape != x.shape:
        raise ValueError(f"activation returned shape {y.shape} for an input of shape {x.shape}; "
                         "it must act elementwise")
    return y


def _gaussian_moments(activation, q=1.0, *, points: int = _POINTS):
    """``(E[phi(sqrt(q) z)], E[phi(sqrt(q) z)^2])`` for ``z ~ N(0, 1)``, vectorized over ``q``."""
    phi = _activation(activation)
    points = _check_points(points)
    q = _variances("q", q, strict=False)
    z, w = _rule_1d(points)
    y = _eval(phi, np.sqrt(q)[..., None] * z)
    return _scalar_if_0d(np.sum(w * y, -1)), _scalar_if_0d(np.sum(w * y * y, -1))


# --------------------------------------------------------------------------------------------
# ReLU, He init: the arc-cosine map (claim 9)


def relu_correlation_map(c):
    """The arc-cosine map of a ReLU layer with He init and zero bias (science.md claim 9):

    ``c' = (sqrt(1 - c^2) + (pi - arccos(c)) c) / pi``.

    ``c`` is the cosine between two inputs' pre-activations ``u, v`` at one layer; ``c'`` is the
    cosine between their pre-activations at the next layer, ``2 E[relu(u) relu(v)]`` for unit
    variances. It equals :func:`correlation_map` ``(c, "relu", weight_var=2)`` and, being
    independent of the weight scale, the cosine of the post-activations (see
    :func:`relu_post_activation_cosine`). Fixed point ``c = 1``; ``c'(0) = 1 / pi``,
    ``c'(-1) = 0``; increasing and convex on ``[-1, 1]``.

    Args:
      c: cosines, any shape; values within 1e-6 outside ``[-1, 1]`` (rounding) are clipped to it,
        values further out raise ``ValueError``.

    Returns:
      ``c'``, the shape of ``c`` (a numpy scalar for a scalar).

    References:
      Cho & Saul (2009), Kernel methods for deep learning, NeurIPS, Sec. 2 (arc-cosine kernels):
      the kernel of degree 1, ``k_1(x, y) = |x| |y| J_1(theta) / pi``, ``J_1 = sin(theta) +
      (pi - theta) cos(theta)``, normalized by ``k_1(x, x) = |x|^2``.
    """
    c = _cosines("c", c)
    return _scalar_if_0d((np.sqrt(np.clip(1.0 - c * c, 0.0, None)) + (np.pi - np.arccos(c)) * c)
                         / np.pi)


def relu_post_activation_cosine(c_pre):
    """The cosine of two ReLU post-activation vectors, given the cosine ``c_pre`` of their
    pre-activations, in a wide layer (zero bias): the same arc-cosine map as
    :func:`relu_correlation_map`,

    ``cos(relu(h_a), relu(h_b)) = E[relu(u) relu(v)] / E[relu(u)^2]
    = (sqrt(1 - c^2) + (pi - arccos(c)) c) / pi``, ``c = c_pre``,

    where the units of ``h_a, h_b`` are i.i.d. draws of ``(u, v)``, jointly Gaussian with cosine
    ``c_pre``. It does not depend on the weight scale (ReLU is positively homogeneous).

    Matching sigprop's measurement to theory: ``cosine_similarity`` is taken after normalizer +
    activation, i.e. on post-activations ``x^l = relu(h^l)``. In a wide ReLU MLP without
    normalizer and without bias, ``h^{l+1} = W x^l`` with zero-mean Gaussian ``W`` preserves
    cosines, so ``cos(h^{l+1}) = cos(x^l)``; with the map above, post-activation cosines iterate
    the same map as pre-activation cosines: ``cos(x^{l+1}) = relu_correlation_map(cos(x^l))``.
    At layer 0, ``c_pre`` is the inputs' cosine (about 0 for N(0, 1) inputs of dimension ``D``,
    +- 1 / sqrt(D)), so the measured cosine at layer ``l`` is about ``iterate(relu_correlation_map,
    c_in, l + 1)[-1]``; the first layer reads ``1 / pi`` although its pre-activations are
    uncorrelated (post-activations have a positive mean). The measured value is a mean over
    pairs of ``map(c_ij)``; the map is convex, so at finite width it sits slightly above the map
    of the mean. For conv nets the flattened-sample cosine only approximately follows the map
    (spatial averaging, zero padding).

    References:
      Cho & Saul (2009), Sec. 2; Poole et al. (2016), arXiv 1606.05340, Sec. 2 (pre-activation
      correlations of wide layers).
    """
    return relu_correlation_map(c_pre)


# --------------------------------------------------------------------------------------------
# Mean-field maps of any activation


def variance_map(q, activation, weight_var: float = 2.0, bias_var: float = 0.0, *,
                 points: int = _POINTS):
    """The mean-field length map of a wide dense layer:

    ``q' = weight_var * E[phi(sqrt(q) z)^2] + bias_var``,

    the variance of the next layer's pre-activations, given pre-activation variance ``q`` and
    weights ``W_ij ~ N(0, weight_var / fan_in)``, biases ``N(0, bias_var)``. ReLU with
    ``weight_var = 2`` (He init) preserves ``q``.

    Args:
      q: pre-activation variances (>= 0), any shape.
      activation: a name from :data:`ACTIVATION_NAMES` or a callable acting elementwise on numpy
        arrays (smooth except possibly at 0; see the module docstring).
      weight_var, bias_var: ``sigma_w^2`` and ``sigma_b^2`` (>= 0).
      points: Gauss-Legendre points on each side of 0.

    Returns:
      ``q'``, the shape of ``q``.

    References:
      Poole et al. (2016), Exponential expressivity in deep neural networks through transient
      chaos, arXiv 1606.05340, Sec. 2 (the length map); Schoenholz et al. (2017), Deep information
      propagation, arXiv 1611.01232, Sec. 2.
    """
    weight_var = _real("weight_var", weight_var, minimum=0.0)
    bias_var = _real("bias_var", bias_var, minimum=0.0)
    _, second = _gaussian_moments(activation, q, points=points)
    return _scalar_if_0d(weight_var * np.asarray(second) + bias_var)


def correlation_map(c, activation, q=1.0, weight_var: float = 2.0, bias_var: float = 0.0, *,
                    points: int = _POINTS):
    """The mean-field correlation map of a wide dense layer, at pre-activation variance ``q``:

    ``c' = (weight_var * E[phi(u1) phi(u2)] + bias_var) / (weight_var * E[phi(u1)^2] + bias_var)``,
    ``u1 = sqrt(q) z1``, ``u2 = sqrt(q) (c z1 + sqrt(1 - c^2) z3)``.

    ``c`` is the cosine (= correlation: pre-activations have zero mean over the random weights)
    between two inputs' pre-activations, both of variance ``q``; ``c'`` is the cosine between
    their pre-activations at the next layer. The denominator is :func:`variance_map` ``(q)``,
    which equals ``q`` when ``q`` is its fixed point ``q*``, the setting of Poole et al.; using
    it keeps ``c'`` a cosine (``c' = 1`` at ``c = 1``) for any ``q``. For ``"relu"`` with
    ``weight_var = 2, bias_var = 0`` this is :func:`relu_correlation_map` for every ``q``, and
    the cosine of the two post-activation vectors (:func:`relu_post_activation_cosine`); for other
    activations or a nonzero bias the post-activation cosine differs (it has no ``bias_var``).

    The 2-D integral is iterated: over ``z3`` for each node ``z1``, split where ``u2`` crosses 0,
    then over ``z1``, split at 0 (module docstring), with ``points`` nodes per piece; ReLU is
    exact to ~1e-12 at 64 points.

    Args:
      c: cosines in ``[-1, 1]``, any shape (broadcast against ``q``).
      activation: a name from :data:`ACTIVATION_NAMES` or an elementwise callable.
      q: the pre-activation variance of both inputs (> 0), broadcast against ``c``.
      weight_var, bias_var: ``sigma_w^2`` and ``sigma_b^2`` (>= 0).
      points: Gauss-Legendre points per piece.

    Returns:
      ``c'``, the broadcast shape of ``c`` and ``q``.

    References:
      Poole et al. (2016), arXiv 1606.05340, Sec. 2 (the correlation map); Schoenholz et
      al. (2017), arXiv 1611.01232, Sec. 2.
    """
    phi = _activation(activation)
    points = _check_points(points)
    weight_var = _real("weight_var", weight_var, minimum=0.0)
    bias_var = _real("bias_var", bias_var, minimum=0.0)
    c, q = np.broadcast_arrays(_cosines("c", c), _variances("q", q, strict=True))
    shape = c.shape
    c, q = c.reshape(-1), q.reshape(-1)
    z1, w1 = _rule_1d(points)  # [2 points]
    out = np.empty_like(c)
    chunk = max(1, 2_000_000 // (4 * points * points))
    for i in range(0, c.size, chunk):
        cc, sq = c[i:i + chunk, None], np.sqrt(q[i:i + chunk, None])  # [k, 1]
        s = np.sqrt(np.clip(1.0 - cc * cc, 0.0, None))
        # u2 = sqrt(q) (c z1 + s z3) crosses 0 at z3 = -c z1 / s
        kink = np.clip(-cc * z1 / np.where(s > 0, s, 1.0), -_Z_MAX, _Z_MAX)  # [k, 2p]
        kink = np.where(s > 0, kink, 0.0)
        breaks = np.stack([np.full_like(kink, -_Z_MAX), kink, np.full_like(kink, _Z_MAX)], -1)
        z3, w3 = _gaussian_rule(breaks, points)  # [k, 2p, 2p]
        u2 = sq[..., None] * (cc[..., None] * z1[None, :, None] + s[..., None] * z3)
        inner = np.sum(w3 * _eval(phi, u2), -1)  # E_z3[phi(u2)]: [k, 2p]
        f1 = _eval(phi, sq * z1)  # phi(u1): [k, 2p]
        cross = np.sum(w1 * f1 * inner, -1)
        second = np.sum(w1 * f1 * f1, -1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i:i + chunk] = (weight_var * cross + bias_var) / (weight_var * second + bias_var)
    return _scalar_if_0d(np.clip(out, -1.0, 1.0).reshape(shape))


def iterate(map_fn: Callable, x0, depth: int) -> np.ndarray:
    """``[x0, f(x0), f(f(x0)), ..., f^depth(x0)]`` for ``f = map_fn``, stacked on a new first
    axis: shape ``[depth + 1, *shape(x0)]``. ``map_fn`` must map an array to an array of the
    same shape (e.g. :func:`relu_correlation_map`, or ``functools.partial(variance_map,
    activation="tanh")``).

    Example: ``iterate(relu_correlation_map, 0.0, 3)`` is ``[0, 1/pi, 0.4937..., 0.6048...]``.
    """
    if not callable(map_fn):
        raise ValueError(f"map_fn={map_fn!r} must be a callable")
    depth = _int("depth", depth, minimum=0)
    xs = [np.asarray(x0, dtype=float)]
    for _ in range(depth):
        x = np.asarray(map_fn(xs[-1]), dtype=float)
        if x.shape != xs[0].shape:
            raise ValueError(f"map_fn returned shape {x.shape} for x0 of shape {xs[0].shape}; "
                             "it must preserve the shape")
        xs.append(x)
    return np.stack(xs)


# --------------------------------------------------------------------------------------------
# BatchNorm: gradient explosion (claim 10)


def bn_gradient_explosion_rate(activation="relu", *, points: int = _POINTS) -> float:
    """Growth factor per layer, going backward, of the squared gradient norm in a wide
    dense -> BatchNorm -> ``phi`` network without skips, at large batch (science.md claim 10):

    ``lambda = E[phi'(z)^2] / Var[phi(z)]``, ``z ~ N(0, 1)``;

    ``pi / (pi - 1) ~= 1.467`` for ReLU, ``1`` for the identity, ``pi (1 + a^2) / (pi (1 + a^2)
    - (1 - a)^2)`` for leaky ReLU of slope ``a``. By the Gaussian Poincare inequality
    ``lambda >= 1``, with equality only for affine ``phi``: no activation removes the explosion
    (Yang et al.'s conclusion). It does not depend on the weight variance or bias (BatchNorm
    removes both).

    Derivation (width -> infinity, then batch B -> infinity; gradient independence assumption,
    as in Yang et al.). Layer ``l``: ``h = W x`` (``W_ij ~ N(0, s^2 / n)``), ``y = BN(h)``
    over the batch, ``x' = phi(y)``. At large batch each unit's ``y`` over the batch is
    distributed as ``N(0, 1)``. Backward, per unit, ``dL/dh = P (phi'(y) * dL/dx') / std(h)``,
    where ``P`` projects out the batch-constant and ``y`` directions (2 of B dimensions: a
    ``1 - O(1/B)`` factor) and ``std(h)^2 = s^2 Var[phi(z)]`` (the variance over the batch of a
    unit fed by ``x = phi(y)``); then ``|W^T g|^2 = s^2 |g|^2``. So
    ``|dL/dx|^2 = s^2 E[phi'(z)^2] / (s^2 Var[phi(z)]) |dL/dx'|^2``, and the same ratio holds for
    the gradients at the dense outputs ``h`` (sigprop's ``grad_norm``, whose norm therefore
    grows by ``sqrt(lambda)``). For ReLU: ``E[phi'^2] = 1/2``, ``Var[relu(z)] = 1/2 - 1/(2 pi)``.
    Checked against numpy simulations of such MLPs (random linear loss, depth 20): at width
    512, batch 256 the measured rate sits 0.3-0.7% above ``lambda`` for relu, leaky ReLU, tanh,
    gelu, sigmoid and the identity (finite width); ``tests/test_theory.py`` runs width 256, batch
    128. Small batches raise it (ReLU, width 256: 1.49 at B = 64, 1.52 at 32, 1.59 at 16, 1.78 at
    8), so compare with measurements at batch >= 64.

    Args:
      activation: a name from :data:`ACTIVATION_NAMES` or an elementwise callable, smooth except
        possibly at 0 (its derivative is taken by central differences at the quadrature nodes,
        which keep away from 0).
      points: Gauss-Legendre points on each side of 0.

    References:
      Yang, Pennington, Rao, Sohl-Dickstein, Schoenholz (2019), A mean field theory of batch
      normalization, ICLR, arXiv 1902.08129 (gradient backpropagation; ``pi / (pi - 1)`` for ReLU
      at large batch).
    """
    phi = _activation(activation)
    points = _check_points(points)
    z, w = _rule_1d(points)
    y = _eval(phi, z)
    eps = 1e-5
    dy = (_eval(phi, z + eps) - _eval(phi, z - eps)) / (2 * eps)
    mean = np.sum(w * y)
    var = np.sum(w * (y - mean) ** 2)
    if not var > 1e-12:
        raise ValueError(f"activation={activation!r} is constant on N(0, 1) inputs "
                         f"(Var[phi(z)] = {var:.3g}); the rate is undefined")
    return float(np.sum(w * dy * dy) / var)


# --------------------------------------------------------------------------------------------
# Residual networks (claim 11)

_UNNORMALIZED = ("none",)
_NORMALIZED = ("batchnorm", "layernorm", "instancenorm", "groupnorm", "rmsnorm", "variancenorm",
               "bmlv", "lmbv", "frn", "regnorm")
_NO_LAW = ("weightnorm", "sws", "meancenter", "evonorm_s0", "evonorm_b0", "prelayernorm",
           "preregnorm")


def resnet_second_moment(blocks: int, norm="none", alpha: float = 1.0) -> np.ndarray:
    """The residual stream's second moment after ``l = 0 .. blocks`` pre-activation residual
    blocks with He init, relative to the input's (science.md claim 11):

    - unnormalized branch (``norm="none"`` or ``False``): ``(1 + alpha^2)^l``; ``2^l`` for
      ``alpha = 1``. The branch ``relu-conv-relu-conv`` preserves the second moment of its input
      (He init), so ``x_{l+1} = x_l + alpha f(x_l)`` has ``E[x_{l+1}^2] = (1 + alpha^2)
      E[x_l^2]`` (the cross term vanishes: zero-mean weights).
    - normalized branch (a name below, or ``True``): ``1 + alpha^2 l``; ``l + 1`` for ``alpha =
      1``. The branch starts with a normalizer, so its output has second moment 1 (normalizer ->
      ReLU -> He conv) whatever the stream's scale, and each block adds ``alpha^2``. The law
      assumes the input's second moment equals one branch's (1); an input of second moment ``m``
      gives ``(m + alpha^2 l) / m`` instead: still linear, with slope ``alpha^2 / m``.
    - ``alpha = 0`` (SkipInit at initialization): 1.

    Names of the normalized regime (activation-based normalizers that standardize the branch's
    conv outputs): ``batchnorm``, ``layernorm``, ``instancenorm``, ``groupnorm``, ``rmsnorm``,
    ``variancenorm``, ``bmlv``, ``lmbv``, ``frn`` (its TLU is a ReLU at init), ``regnorm``.
    Names with no law here raise ``ValueError``: the parametric ``weightnorm`` and ``sws`` grow
    exponentially ([BB]) with a base set by their branch gain, ``meancenter`` does not rescale,
    the evonorms replace the activation (branch second moment not 1), and the wrapping
    ``prelayernorm`` / ``preregnorm`` act on the conv input too; pass ``norm=False`` / ``True``
    to use an idealized law anyway.

    Returns:
      float array ``[blocks + 1]``, entry ``l`` the second moment after ``l`` blocks (entry 0 = 1).

    References:
      De & Smith (2020), Batch normalization biases residual blocks towards the identity function
      in deep networks, NeurIPS, arXiv 2002.10444 (the variance of normalized and unnormalized
      residual branches at initialization; SkipInit); [BB] Sec. 3.
    """
    blocks = _int("blocks", blocks, minimum=0)
    alpha = _real("alpha", alpha)
    if isinstance(norm, (bool, np.bool_)):
        normalized = bool(norm)
    elif isinstance(norm, str) and norm in _UNNORMALIZED + _NORMALIZED:
        normalized = norm in _NORMALIZED
    elif isinstance(norm, str) and norm in _NO_LAW:
        raise ValueError(f"norm={norm!r} has no second-moment law here (see the docstring); "
                         f"allowed: {', '.join(_UNNORMALIZED + _NORMALIZED)}, or a bool "
                         "(True: normalized branch, False: unnormalized)")
    else:
        raise ValueError(f"norm={norm!r}; allowed: {', '.join(_UNNORMALIZED + _NORMALIZED)}, or "
                         "a bool (True: normalized branch, False: unnormalized)")
    l = np.arange(blocks + 1, dtype=float)
    return 1.0 + alpha ** 2 * l if normalized else (1.0 + alpha ** 2) ** l


# --------------------------------------------------------------------------------------------
# GroupNorm rank (claim 3)


def groupnorm_rank_bound(width: int, group_size, scale: float = 1.0):
    """The trend of [BB]'s lower bound on the rank of a GroupNorm network's final-layer
    representations: ``rank >= Omega(sqrt(width / group_size))``; returns
    ``scale * sqrt(width / group_size)``.

    The constants of the bound are unknown: only the trend (rank falling as the group size
    grows, as ``group_size^(-1/2)``) is meaningful, not the value; ``scale`` lets a plot anchor
    the curve to a measurement.

    Args:
      width: channels of the layer (integer >= 1).
      group_size: channels per group (integer >= 1 dividing ``width``), or a sequence of them.
      scale: the unknown constant (> 0).

    Returns:
      a float, or an array shaped like ``group_size``.

    References:
      Lubana, Dick, Tanaka (2021), Beyond BatchNorm, NeurIPS, arXiv 2106.05956, Sec. 4
      (informative forward propagation), extending Daneshmand et al. (2020)'s BatchNorm result.
    """
    width = _int("width", width, minimum=1)
    scale = _real("scale", scale, minimum=0.0, strict=True)
    g = np.asarray(group_size)
    if g.dtype == bool or not np.issubdtype(g.dtype, np.integer) or (g < 1).any():
        raise ValueError(f"group_size={group_size!r} must be an integer >= 1 (or a sequence)")
    if (width % g).any():
        raise ValueError(f"group_size={group_size!r} must divide width={width}")
    out = scale * np.sqrt(width / g)
    return float(out) if out.ndim == 0 else out


__all__ = [
    "ACTIVATION_NAMES",
    "NUMPY_ACTIVATIONS",
    "relu_correlation_map",
    "relu_post_activation_cosine",
    "variance_map",
    "correlation_map",
    "iterate",
    "bn_gradient_explosion_rate",
    "resnet_second_moment",
    "groupnorm_rank_bound",
]
