"""Non-residual CNN ("VGG" in [BB]): 3x3 conv -> normalizer -> activation per layer, then a
global average pool and a dense classifier."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from sigprop.nn import normalizers
from sigprop.nn.common import (
    Unit,
    check_conv_impl,
    check_image_inputs,
    head,
    resolve,
    run_stack,
    runs,
)
from sigprop.nn.mlp import layer_pattern
from sigprop.taps import probe
from sigprop.util.checks import check_positive

# [BB]'s configurations: (channels, stride); stride 2 halves the map.
_S = lambda c: (c, 2)  # noqa: E731
CFGS: dict[str, tuple[tuple[int, int], ...]] = {
    "cfg_10": tuple((c, 1) if isinstance(c, int) else c for c in
                    [64, _S(64), 128, _S(128), 256, _S(256), 512, _S(512), 512, 512]),
    "cfg_20": tuple((c, 1) if isinstance(c, int) else c for c in
                    [64, 64, 64, _S(64), 128, 128, 128, _S(128), 256, 256, 256, _S(256),
                     256, 256, 256, _S(256), 512, 512, 512, 512]),
    "cfg_40": tuple((c, 1) if isinstance(c, int) else c for c in
                    [64] * 7 + [_S(64)] + [128] * 7 + [_S(128)] + [256] * 7 + [_S(256)]
                    + [512] * 7 + [_S(512)] + [512] * 8),
}
CFG_NAMES = tuple(CFGS) + ("uniform",)


class CNN(nn.Module):
    """A plain CNN over ``layers`` = ((channels, stride), ...). Layer ``i`` is ``layer{i:02d}``.

    Consecutive identical layers (same input width, output width and stride) after the first run
    as one ``nn.scan`` stack; ``scan=False`` unrolls them into the same names and params.
    """

    layers: tuple
    spec: normalizers.NormSpec
    activation: Any = "relu"
    n_classes: int = 100
    scan: bool = True
    conv_impl: str = "auto"
    remat: bool = False

    def check_inputs(self, shape) -> None:
        check_image_inputs(shape, "cnn")

    @nn.compact
    def __call__(self, x):
        pat = layer_pattern(len(self.layers))
        kw = dict(spec=self.spec, activation=self.activation, impl=self.conv_impl)
        c0, s0 = self.layers[0]
        x = Unit(features=c0, stride=s0, **kw, name=pat.format(0))(x)
        # layer i > 0 is determined by (input width, output width, stride)
        keys = [(self.layers[i - 1][0],) + tuple(self.layers[i]) for i in range(1, len(self.layers))]
        for start, length in runs(keys):
            c, s = self.layers[start + 1]
            if self.scan and length > 1:
                x = run_stack(Unit(features=c, stride=s, **kw,
                                   name=probe.scan_name(pat, start + 1)), x, length,
                              remat=self.remat)
            else:
                for i in range(start + 1, start + 1 + length):
                    x = Unit(features=c, stride=s, **kw, name=pat.format(i))(x)
        return head(x, self.n_classes, self.spec.center_input)


def cnn(cfg: str = "cfg_10", *, depth: int | None = None, width: int = 64, norm="batchnorm",
        activation=None, n_classes: int = 100, scan: bool = True, conv_impl: str = "auto",
        remat: bool = False, **norm_options) -> CNN:
    """[BB]'s non-residual CNN.

    Args:
      cfg: ``"cfg_10"``, ``"cfg_20"``, ``"cfg_40"`` (science.md) or ``"uniform"``: ``depth`` 3x3
        convs of ``width`` channels, stride 1 (the rank vs group size experiments).
      norm, activation, n_classes, scan, remat, **norm_options: as in
        :func:`sigprop.models.mlp`.
      conv_impl: ``"auto"``, ``"xla"`` or ``"shift"`` (see ``sigprop.models.layers.conv2d``).
    """
    if cfg not in CFG_NAMES:
        raise ValueError(f"cfg={cfg!r}; allowed: {', '.join(CFG_NAMES)}")
    if cfg == "uniform":
        if depth is None:
            raise ValueError("cfg='uniform' needs depth= (an integer >= 1)")
        check_positive(depth=depth, width=width)
        layers = ((width, 1),) * depth
    else:
        if depth is not None:
            raise ValueError(f"depth= is only for cfg='uniform'; {cfg!r} has {len(CFGS[cfg])} layers")
        layers = CFGS[cfg]
    check_conv_impl(conv_impl)
    check_positive(n_classes=n_classes)
    spec, act = resolve(norm, activation, norm_options)
    for c in sorted({c for c, _ in layers}):
        spec.check_width(c)
    return CNN(layers=layers, spec=spec, activation=act, n_classes=n_classes, scan=scan,
               conv_impl=conv_impl, remat=bool(remat))
