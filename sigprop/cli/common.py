"""What several commands share: the zoo-model options and the model they build, and list-valued
arguments."""

from __future__ import annotations

import argparse

from sigprop.nn.transformer import PLACEMENTS


def add_model_args(p, *, model: str, norm: str) -> None:
    """The zoo-model options :func:`build_model` reads (``--model``, ``--cfg``, ``--norm``,
    sizes, normalizer options, resnet and transformer flags), shared by ``analyze``, ``hessian``
    and ``train``."""
    p.add_argument("--model", choices=["mlp", "cnn", "resnet56", "wrn", "transformer"],
                   default=model)
    p.add_argument("--cfg", default="cfg_10", help="cnn: cfg_10, cfg_20, cfg_40 or uniform")
    p.add_argument("--norm", default=norm)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--width", type=int, default=None, help="width (mlp, uniform cnn) or k (wrn)")
    p.add_argument("--group-size", type=int, default=None)
    p.add_argument("--num-groups", type=int, default=None)
    p.add_argument("--preact", action="store_true")
    p.add_argument("--skipinit", action="store_true")
    t = p.add_argument_group("transformer", "--model transformer: continuous tokens "
                             "[batch, seq-len, width], or with --patch images [batch, image, "
                             "image, 3]")
    t.add_argument("--placement", choices=list(PLACEMENTS), default="pre")
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--seq-len", type=int, default=16)
    t.add_argument("--patch", type=int, default=None, help="patch size: image patches as tokens")
    t.add_argument("--mlp-ratio", type=int, default=4)
    t.add_argument("--branch-scale", type=float, default=None)
    t.add_argument("--non-causal", action="store_true", help="attend to every token")
    t.add_argument("--no-skip", action="store_true", help="drop the residual additions")
    t.add_argument("--attention-only", action="store_true", help="no MLP sublayers")
    t.add_argument("--qk-norm", choices=["layernorm", "rmsnorm", "l2"], default=None,
                   help="normalize queries and keys (Dehghani et al. 2023; l2: Henry et al. 2020)")
    t.add_argument("--ln-scaling", action="store_true",
                   help="pre-LN with block l's normalizer outputs / sqrt(l) (Sun et al. 2025)")
    t.add_argument("--weight", choices=["plain", "sigma_reparam"], default="plain",
                   help="every block projection gamma W / sigma(W) (Zhai et al. 2023)")
    t.add_argument("--cls-token", action="store_true",
                   help="with --patch: prepend a class token and classify from it")


def build_model(args):
    from sigprop import nn as models

    opts = {}
    if args.group_size is not None:
        opts["group_size"] = args.group_size
    if args.num_groups is not None:
        opts["num_groups"] = args.num_groups
    common = dict(norm=args.norm, n_classes=args.classes, **opts)
    if args.model == "mlp":
        return models.mlp(args.depth or 10, args.width or 256, **common)
    if args.model == "cnn":
        if args.cfg == "uniform":
            return models.cnn("uniform", depth=args.depth or 10, width=args.width or 64, **common)
        return models.cnn(args.cfg, **common)
    if args.model == "resnet56":
        return models.resnet56(preact=args.preact, skipinit=args.skipinit, **common)
    if args.model == "transformer":
        return models.transformer(
            args.depth or 4, args.width or 64, args.heads, placement=args.placement,
            mlp_ratio=args.mlp_ratio, causal=not args.non_causal, patch=args.patch,
            skip=not args.no_skip, attention_only=args.attention_only,
            branch_scale=args.branch_scale, qk_norm=args.qk_norm, ln_scaling=args.ln_scaling,
            weight=args.weight, cls_token=args.cls_token, **common)
    return models.wrn(args.depth or 26, args.width or 2, **common)


def input_shape(args) -> tuple[int, ...]:
    """The inputs of the model :func:`build_model` builds: ``[batch, width]`` for an mlp (its
    width, 256 by default), ``[batch, seq_len, width]`` N(0, 1) tokens for a transformer without
    ``--patch``, else ``[batch, image, image, 3]``."""
    if args.model == "mlp":
        return (args.batch, args.width or 256)
    if args.model == "transformer" and args.patch is None:
        return (args.batch, args.seq_len, args.width or 64)
    return (args.batch, args.image, args.image, 3)


def ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers; got {text!r}")
