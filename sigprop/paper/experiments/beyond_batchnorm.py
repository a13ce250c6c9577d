"""[BB]'s init-time experiments: ResNet variance (claims 1, 11), the non-residual CNN and
GroupNorm's group size (claims 2-4), and Brock et al.'s signal-propagation plot (BN, no
normalizer, and their NF-ResNet: sws, alpha = 0.2, beta scaling)."""

from __future__ import annotations

from sigprop import nn as models
from sigprop.paper.experiments import Experiment, register

# ---------------------------------------------------------------------------- ResNet variance

POST_EXPONENTIAL = ("none", "weightnorm", "sws")
POST_LINEAR = ("batchnorm", "layernorm", "instancenorm", "groupnorm", "frn")
SKIPINIT = ("weightnorm", "sws")
PRE = ("none", "batchnorm")


def post_options(s, norm: str) -> dict:
    """The normalizer options of a post-activation run: groupnorm takes ``s.group_size``
    channels per group (8: 4/8/16 groups at widths 32/64/128, 2 at the quick width 16), so that
    it is neither instancenorm (g = 1) nor layernorm (g = width) at any stage. [BB]'s default of
    32 groups is instancenorm at width 32, no independent case."""
    return dict(group_size=s.group_size) if norm == "groupnorm" else {}


def check_group_size(s) -> None:
    widths = tuple(s.post_widths)
    if any(w % s.group_size or s.group_size in (1, w) for w in widths):
        raise ValueError(f"group_size={s.group_size} must divide the widths {widths} and be "
                         "neither 1 (instancenorm) nor a width (layernorm)")


def _resnet_measure(r) -> None:
    s = r.s
    check_group_size(s)
    post = (s.post_batch, s.post_image, s.post_image, 3)
    for norm in POST_EXPONENTIAL + POST_LINEAR:
        r.analyze(f"post/{norm}", models.resnet(s.blocks, tuple(s.post_widths), norm=norm,
                                                **post_options(s, norm)), post,
                  metrics=("activation_variance", "channel_squared_mean"))
    pre = (s.pre_batch, s.pre_image, s.pre_image, 3)
    for norm in SKIPINIT:
        r.analyze(f"pre_skipinit/{norm}", models.resnet(
            s.blocks, tuple(s.post_widths), norm=norm, preact=True, skipinit=True), post,
            metrics=("activation_variance", "channel_squared_mean"))
    for norm in PRE:
        r.analyze(f"pre/{norm}", models.resnet(s.blocks, tuple(s.pre_widths), norm=norm,
                                               preact=True), pre, seeds=s.pre_seeds,
                  metrics=("activation_variance", "channel_squared_mean"))


RESNET_VARIANCE = register(Experiment(
    "resnet_variance", "ResNet activation variance vs block ([BB] claims 1, 11)",
    quick=dict(seeds=3, blocks=9, post_widths=(16,), post_image=16, post_batch=8,
               pre_widths=(32, 64, 128), pre_image=32, pre_batch=8, pre_seeds=12, group_size=8),
    full=dict(seeds=8, blocks=9, post_widths=(32, 64, 128), post_image=32, post_batch=64,
              pre_widths=(32, 64, 128), pre_image=32, pre_batch=64, pre_seeds=12, group_size=8),
    measure=_resnet_measure,
    points=lambda s: len(POST_EXPONENTIAL + POST_LINEAR + SKIPINIT + PRE),
    inputs=lambda s: f"N(0, 1) images, batch {s.post_batch} ({s.post_image}x{s.post_image}) / "
                     f"{s.pre_batch} ({s.pre_image}x{s.pre_image})"))


# ------------------------------------------------------------------ non-residual CNN, GroupNorm


def group_label(g: int) -> str:
    return f"groupnorm(g={g})"


def cnn_labels(s) -> dict[str, tuple[str, dict]]:
    """The CNN runs: label -> (normalizer, options). Group size 1 is instancenorm and, in the
    uniform CNN, group size = width is layernorm (equal by construction; tested), so those run
    once, under those names."""
    runs = {"layernorm": ("layernorm", {}), "instancenorm": ("instancenorm", {}),
            "batchnorm": ("batchnorm", {})}
    for g in s.group_sizes:
        if gn_run(s, g) == group_label(g):
            runs[group_label(g)] = ("groupnorm", dict(group_size=g))
    return runs


def gn_run(s, g: int) -> str:
    """The run label of GroupNorm with group size ``g`` on the CNN."""
    if g == 1:
        return "instancenorm"
    if s.cfg == "uniform" and g == s.width:
        return "layernorm"
    return group_label(g)


def _cnn_model(s, norm, opts):
    return models.cnn(s.cfg, norm=norm, **({} if s.cfg != "uniform"
                                          else dict(depth=s.depth, width=s.width)), **opts)


def _cnn_measure(r) -> None:
    s = r.s
    shape = (s.batch, s.image, s.image, 3)
    for label, (norm, opts) in cnn_labels(s).items():
        r.analyze(f"cnn/{label}", _cnn_model(s, norm, opts), shape)
    if not _rank_is_cnn(s):
        for g in s.rank_group_sizes:
            r.analyze(f"rank/{g}", models.cnn("uniform", depth=s.rank_depth, width=s.rank_width,
                                              norm="groupnorm", group_size=g), shape,
                      metrics=("stable_rank", "effective_rank"))


def _rank_is_cnn(s) -> bool:
    return (s.cfg == "uniform" and s.depth == s.rank_depth and s.width == s.rank_width
            and set(s.rank_group_sizes) <= set(s.group_sizes))


def rank_run(s, g: int) -> str:
    return f"cnn/{gn_run(s, g)}" if _rank_is_cnn(s) else f"rank/{g}"


CNN_GROUPNORM = register(Experiment(
    "cnn_groupnorm", "Non-residual CNN per normalizer and GroupNorm group size ([BB] claims 2-4)",
    quick=dict(seeds=3, cfg="uniform", depth=10, width=64, image=16, batch=32,
               group_sizes=(1, 2, 4, 8, 16, 32, 64), gn_large=16, gn_small=4,
               rank_depth=10, rank_width=64, rank_group_sizes=(1, 2, 4, 8, 16, 32, 64),
              rank_claim_sizes=(1, 4, 16, 64)),
    full=dict(seeds=8, cfg="cfg_10", depth=None, width=None, image=32, batch=64,
              group_sizes=(1, 2, 4, 8, 16, 32, 64), gn_large=64, gn_small=8,
              rank_depth=10, rank_width=64, rank_group_sizes=(1, 2, 4, 8, 16, 32, 64),
              rank_claim_sizes=(1, 4, 16, 64)),
    measure=_cnn_measure,
    points=lambda s: len(cnn_labels(s)) + (0 if _rank_is_cnn(s) else len(s.rank_group_sizes)),
    inputs=lambda s: f"N(0, 1) images, batch {s.batch} ({s.image}x{s.image})"))


# ------------------------------------------------------------------- Brock et al.'s SPP

NF_ALPHA = 0.2
# The runs. "sws+nf" is Brock et al.'s NF-ResNet: h + alpha f(h / beta), beta the stream's
# analytic expected std, scaled weight standardization, alpha = sizes.nf_alpha = 0.2
# (sigprop.nn.resnet, nf_beta=True): its stream variance is 1 + l alpha^2 within a stage.
BROCK = ("batchnorm", "none", "sws+nf")


def brock_legend(label: str, s) -> str:
    return f"sws NF-ResNet (alpha={s.nf_alpha:g}, beta scaling)" if label == "sws+nf" else label


def brock_options(label: str, s) -> dict:
    if label == "sws+nf":
        return dict(norm="sws", alpha=s.nf_alpha, nf_beta=True)
    return dict(norm=label)


def _brock_measure(r) -> None:
    s = r.s
    shape = (s.batch, s.image, s.image, 3)
    for label in BROCK:
        kw = brock_options(label, s)
        r.analyze(f"spp/{label}", models.resnet(s.blocks, tuple(s.widths), preact=True, **kw),
                  shape, metrics=("activation_variance", "channel_squared_mean",
                                  "residual_variance"))


BROCK_SPP = register(Experiment(
    "brock_spp", "Brock et al.'s signal-propagation plot, pre-activation ResNet",
    quick=dict(seeds=3, blocks=9, widths=(16, 32, 64), image=16, batch=8, nf_alpha=NF_ALPHA),
    full=dict(seeds=8, blocks=9, widths=(32, 64, 128), image=32, batch=64, nf_alpha=NF_ALPHA),
    measure=_brock_measure, points=lambda s: len(BROCK),
    inputs=lambda s: f"N(0, 1) images, batch {s.batch} ({s.image}x{s.image})"))
