"""Residual networks: CIFAR ResNet-56 (post- or pre-activation, SkipInit) and WideResNet-26.

Layer names: ``stem``; ``stage{s}/block{b}/act1`` (after the first normalizer + activation),
``.../act2`` (pre-activation only), ``.../out`` (the residual stream after the addition, and after
the final activation in the post-activation block); gradient taps ``.../conv1``, ``.../conv2``,
``.../shortcut`` at the conv outputs; branch taps ``.../branch`` (the residual branch, times its
gain, before the addition: ``residual_variance``). Names come from the taps, in call order. Blocks of a stage after the first are identical and run as
one ``nn.scan`` stack (``scan=False`` unrolls them).

``nf_beta=True`` (``norm="sws"``, pre-activation only) makes Brock et al. 2021's NF-ResNet:
blocks ``h + alpha * f(h / beta)``, each dividing its input by ``beta = sqrt(Var(h))``, the
stream's expected variance computed analytically (``Var(h_0) = 1``, ``Var(h_{l+1}) = Var(h_l) +
alpha^2``, back to ``1 + alpha^2`` after a transition block, whose shortcut conv takes the
activated, scaled input ``act(h / beta)`` as in their code); their stem, a bare
weight-standardized conv without activation (``sws`` folds the scaled-ReLU gain into every conv;
the stem's input follows no ReLU, so the stem divides that gain out: ``Var(h_0) = Var(input)``).
Each block has its own ``beta``, so the blocks are unrolled, not scanned.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sigprop.nn import normalizers
from sigprop.nn.common import (
    Unit,
    act_slot,
    affine_op,
    check_conv_impl,
    check_image_inputs,
    head,
    norm_slot,
    resolve,
    run_stack,
)
from sigprop.nn.layers import SCALED_RELU_GAIN
from sigprop.taps import probe
from sigprop.util.checks import check_positive


class _Block(nn.Module):
    features: int
    stride: int
    spec: normalizers.NormSpec
    activation: Any
    shortcut: str  # "identity", "conv" or "none"
    preact: bool = False
    skip_gain: float = 1.0
    learn_gain: bool = False  # SkipInit: alpha is a parameter (initialized to skip_gain)
    shortcut_kernel: int = 3
    impl: str = "auto"
    beta: float | None = None  # NF-ResNet: the input is divided by beta (see the module docstring)

    def _conv(self, x, stride=1, kernel=3):
        return affine_op(self.spec, self.features, conv=True, stride=stride, kernel=kernel,
                         impl=self.impl)(x)

    def _norm_act(self, y):
        return act_slot(self.spec, self.activation)(norm_slot(self.spec, self.activation)(y))

    def _gain(self, y):
        if self.learn_gain:
            alpha = self.param("skip_gain", nn.initializers.constant(self.skip_gain), (), jnp.float32)
            return alpha * y
        return y if self.skip_gain == 1.0 else self.skip_gain * y

    @nn.compact
    def __call__(self, x):
        return self._preact(x) if self.preact else self._postact(x)

    def _postact(self, x):
        # conv-norm-act-conv-norm, times gain, plus shortcut, then act ([BB] BasicBlock)
        y = probe.Tap("grad", name="conv1")(self._conv(x, self.stride))
        y = probe.Tap("act", name="act1")(self._norm_act(y))
        y = probe.Tap("grad", name="conv2")(self._conv(y))
        y = self._gain(norm_slot(self.spec, self.activation)(y))
        if self.shortcut != "none":
            y = probe.Tap("branch", name="branch")(y)
        if self.shortcut == "conv":
            s = probe.Tap("grad", name="shortcut")(
                self._conv(x, self.stride, self.shortcut_kernel))
            y = y + norm_slot(self.spec, self.activation)(s)
        elif self.shortcut == "identity":
            y = y + x
        y = act_slot(self.spec, self.activation)(y)
        return probe.Tap("act", name="out")(y)

    def _preact(self, x):
        # norm-act-conv-norm-act-conv, times gain, plus shortcut ([BB] preact_BasicBlock)
        a = probe.Tap("act", name="act1")(self._norm_act(x if self.beta is None
                                                          else x / self.beta))
        y = a
        y = probe.Tap("grad", name="conv1")(self._conv(y, self.stride))
        y = probe.Tap("act", name="act2")(self._norm_act(y))
        y = self._gain(probe.Tap("grad", name="conv2")(self._conv(y)))
        if self.shortcut != "none":
            y = probe.Tap("branch", name="branch")(y)
        if self.shortcut == "conv":
            s = norm_slot(self.spec, self.activation)(x) if self.beta is None else a
            y = y + probe.Tap("grad", name="shortcut")(
                self._conv(s, self.stride, self.shortcut_kernel))
        elif self.shortcut == "identity":
            y = y + x
        return probe.Tap("act", name="out")(y)


class ResNet(nn.Module):
    """A CIFAR residual network: a stem, then stages of basic blocks, then pool + classifier.

    ``stages`` = ((width, blocks, stride), ...). ``stem`` is a conv-norm-act unit (``"unit"``,
    [BB]'s ResNet-56) or a bare conv (``"conv"``, WideResNet). ``final_norm`` adds a norm + act
    after the last stage (WideResNet), tapped as ``final``.
    """

    stages: tuple
    spec: normalizers.NormSpec
    activation: Any = "relu"
    n_classes: int = 100
    stem_width: int = 32
    stem: str = "unit"
    preact: bool = False
    skip: bool = True
    skip_gain: float = 1.0
    learn_gain: bool = False
    shortcut_kernel: int = 3
    final_norm: bool = False
    scan: bool = True
    conv_impl: str = "auto"
    remat: bool = False
    nf_beta: bool = False

    def _plan(self):
        """``[(stage, first block, count, block kwargs)]``: each entry one module or stack."""
        plan, cin, widths_in = [], self.stem_width, []  # widths_in: each run's input width
        var = 1.0  # NF-ResNet: the stream's expected variance at the block's input
        for s, (width, blocks, stride) in enumerate(self.stages, start=1):
            for b in range(blocks):
                st = stride if b == 0 else 1
                if not self.skip:
                    sc = "none"
                elif st != 1 or cin != width:
                    sc = "conv"
                else:
                    sc = "identity"
                kw = dict(features=width, stride=st, shortcut=sc)
                if self.nf_beta:
                    kw["beta"] = float(var) ** 0.5
                    var = (1.0 if sc == "conv" else var) + self.skip_gain ** 2
                # a stack's blocks map width -> width: the block that changes the width (also
                # without a shortcut, skip=False) starts a new run
                if plan and plan[-1][0] == s and plan[-1][3] == kw and widths_in[-1] == width \
                        and cin == width:
                    plan[-1] = (s, plan[-1][1], plan[-1][2] + 1, kw)
                else:
                    plan.append((s, b, 1, kw))
                    widths_in.append(cin)
                cin = width
        return plan

    def check_inputs(self, shape) -> None:
        check_image_inputs(shape, "resnet")
        if self.nf_beta and not (self.preact and self.skip):
            raise ValueError("nf_beta=True needs the pre-activation block with skips")

    @nn.compact
    def __call__(self, x):
        if self.nf_beta:
            x = _NFStem(self.stem_width, self.spec, self.conv_impl, name="stem")(x)
        elif self.stem == "unit":
            x = Unit(self.stem_width, self.spec, self.activation, impl=self.conv_impl, name="stem")(x)
        else:
            x = affine_op(self.spec, self.stem_width, conv=True, impl=self.conv_impl)(x)
            x = probe.Tap("grad", name="stem")(x)
        common = dict(spec=self.spec, activation=self.activation, preact=self.preact,
                      skip_gain=self.skip_gain, learn_gain=self.learn_gain,
                      shortcut_kernel=self.shortcut_kernel, impl=self.conv_impl)
        plan = self._plan()
        for s in range(1, len(self.stages) + 1):
            stage_runs = [(first, count, {**common, **kw}) for t, first, count, kw in plan if t == s]
            x = _Stage(name=f"stage{s}")(x, stage_runs, self.scan, self.remat)
        if self.final_norm:
            x = _FinalNorm(self.spec, self.activation, name="final")(x)
        return head(x, self.n_classes, self.spec.center_input)


class _Stage(nn.Module):
    """A namespace for one stage's blocks, given as runs ``(first block, count, block kwargs)``."""

    @nn.compact
    def __call__(self, x, stage_runs, scan, remat=False):
        for first, count, kw in stage_runs:
            if scan and count > 1:
                x = run_stack(_Block(**kw, name=probe.scan_name("block{}", first)), x, count,
                              remat=remat)
            else:
                for b in range(first, first + count):
                    x = _Block(**kw, name=f"block{b}")(x)
        return x


class _NFStem(nn.Module):
    """NF-ResNet's stem: a bare sws conv without its scaled-ReLU gain (module docstring)."""

    features: int
    spec: normalizers.NormSpec
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        y = affine_op(self.spec, self.features, conv=True, impl=self.impl)(x) / SCALED_RELU_GAIN
        return probe.observe_act(self, probe.observe_grad(self, y))


class _FinalNorm(nn.Module):
    spec: normalizers.NormSpec
    activation: Any

    @nn.compact
    def __call__(self, x):
        y = act_slot(self.spec, self.activation)(norm_slot(self.spec, self.activation)(x))
        return probe.observe_act(self, y)


def resnet(blocks: int = 9, widths: tuple = (32, 64, 128), *, norm="batchnorm", activation=None,
           n_classes: int = 100, preact: bool = False, skipinit: bool = False, alpha: float = 1.0,
           scan: bool = True, conv_impl: str = "auto", remat: bool = False,
           nf_beta: bool = False, **norm_options) -> ResNet:
    """A CIFAR ResNet of ``len(widths)`` stages x ``blocks`` basic blocks (``resnet56`` is
    ``blocks=9, widths=(32, 64, 128)``; small ones make quick tests). Arguments as in
    :func:`resnet56`; ``nf_beta=True`` (with ``preact=True``): Brock et al. 2021's NF-ResNet
    block ``h + alpha * f(h / beta)``, beta the stream's analytic expected std (module
    docstring); their setting is ``norm="sws", alpha=0.2``."""
    if nf_beta and not preact:
        raise ValueError("nf_beta=True is the pre-activation NF-ResNet block; pass preact=True")
    check_positive(blocks=blocks)
    if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"widths={widths!r} must be a non-empty tuple of integers >= 1")
    check_positive(n_classes=n_classes)
    check_conv_impl(conv_impl)
    spec, act = resolve(norm, activation, norm_options)
    if nf_beta and spec.weight != "sws":
        raise ValueError(f"nf_beta=True is Brock et al.'s NF-ResNet, norm='sws'; got {norm!r}")
    for c in widths:
        spec.check_width(c)
    stages = tuple((w, blocks, 1 if i == 0 else 2) for i, w in enumerate(widths))
    return ResNet(stages=stages, spec=spec, activation=act, n_classes=n_classes,
                  stem_width=widths[0], stem="unit", preact=preact,
                  skip_gain=0.0 if skipinit else float(alpha), learn_gain=skipinit, scan=scan,
                  conv_impl=conv_impl, remat=bool(remat), nf_beta=bool(nf_beta))


def resnet56(*, norm="batchnorm", activation=None, n_classes: int = 100, preact: bool = False,
             skipinit: bool = False, alpha: float = 1.0, scan: bool = True,
             conv_impl: str = "auto", remat: bool = False, **norm_options) -> ResNet:
    """[BB]'s CIFAR ResNet-56: stem 3x3 conv 3->32 + norm + act; 3 stages x 9 basic blocks of
    widths 32, 64, 128, strides 1, 2, 2; 3x3 strided conv + norm shortcut where the shape changes.

    Args:
      preact: the pre-activation block (norm-act-conv-norm-act-conv, times gain, plus shortcut).
      skipinit: the residual branch is multiplied by a learnable alpha initialized to 0 (De & Smith
        2020). alpha: a fixed branch gain instead (1 = standard).
      norm, activation, n_classes, scan, conv_impl, remat, **norm_options: as in
        :func:`sigprop.models.cnn`.
    """
    return resnet(9, (32, 64, 128), norm=norm, activation=activation, n_classes=n_classes,
                  preact=preact, skipinit=skipinit, alpha=alpha, scan=scan, conv_impl=conv_impl,
                  remat=remat, **norm_options)


def wrn(depth: int = 26, k: int = 2, *, skip: bool = True, norm="batchnorm", activation=None,
        n_classes: int = 100, scan: bool = True, conv_impl: str = "auto", remat: bool = False,
        **norm_options) -> ResNet:
    """WideResNet-``depth``-``k`` (Zagoruyko & Komodakis 2016), pre-activation blocks.

    Stem 3x3 conv 3->16; 3 stages of ``(depth - 2) / 6`` blocks of widths 16k, 32k, 64k, strides
    1, 2, 2; a norm -> 1x1 conv shortcut where the shape changes; a final norm + act. With
    ``skip=False`` there are no shortcuts at all ([U] studies WRN without skips).
    """
    check_positive(depth=depth, k=k)
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"depth={depth}: a WideResNet needs depth = 6 n + 2 with n >= 1 (e.g. 26)")
    check_positive(n_classes=n_classes)
    check_conv_impl(conv_impl)
    spec, act = resolve(norm, activation, norm_options)
    n = (depth - 2) // 6
    widths = (16 * k, 32 * k, 64 * k)
    for c in (16,) + widths:
        spec.check_width(c)
    return ResNet(stages=tuple((w, n, st) for w, st in zip(widths, (1, 2, 2))), spec=spec,
                  activation=act, n_classes=n_classes, stem_width=16, stem="conv", preact=True,
                  skip=skip, shortcut_kernel=1, final_norm=True, scan=scan, conv_impl=conv_impl,
                  remat=bool(remat))
