"""The figures of [BB], [U] and Brock et al. at initialization, drawn from the experiments'
data. Each plot returns what it drew, ``{"panel/line": y values}``."""

from __future__ import annotations

import numpy as np

from sigprop.analyses import theory as th
from sigprop.paper import validate as _v  # noqa: E402 (the module; sigprop.validate is the function)
from sigprop.paper.experiments import beyond_batchnorm as bb
from sigprop.paper.experiments import unique
from sigprop.paper.figures import Figure, band, color, group_color, register, theory


def _stage1(run) -> np.ndarray:
    return run.index(lambda n: n.startswith("stage1/") and n.endswith("/out"))


def _legend(ax, **kw):
    ax.legend(fontsize=7, frameon=False, **kw)


# ------------------------------------------------------------------------ [BB] ResNet variance


def _resnet_variance(d, axes) -> dict:
    s, drawn = d.sizes, {}
    blocks = np.arange(s.blocks)
    ax = axes[0]
    for norm in bb.POST_EXPONENTIAL + bb.POST_LINEAR:
        run = d.run(f"post/{norm}")
        v = run.activation_variance[:, _stage1(run)]
        label = f"groupnorm (g = {s.group_size})" if norm == "groupnorm" else norm
        drawn[f"post/{norm}"] = band(ax, v / v[:, :1], label, x=blocks, color=color(norm),
                                     log=True)
    for norm in bb.SKIPINIT:
        run = d.run(f"pre_skipinit/{norm}")
        v = run.activation_variance[:, _stage1(run)]
        drawn[f"post/{norm}+skipinit"] = band(ax, v / v[:, :1], f"{norm} + SkipInit (pre-act)",
                                              x=blocks, color=color(norm), ls=":", log=True)
    drawn["post/theory_2^l"] = theory(ax, blocks, 2.0 ** blocks, "2^l")
    drawn["post/theory_l+1"] = theory(ax, blocks, blocks + 1.0, "l + 1")
    ax.lines[-1].set_ls("-.")
    ax.set(xlabel="block l (stage 1)", ylabel="activation variance / block 0's",
           title=f"(a) post-activation ResNet, widths {tuple(s.post_widths)}")
    _legend(ax, ncol=2)
    ax = axes[1]
    f = _v.resnet_fits(d)
    for norm in bb.PRE:
        m = f["second_moment"][norm]
        drawn[f"pre/{norm}"] = band(ax, m / m[:, :1], norm, x=blocks, color=color(norm),
                                    log=True)
    # the laws from the measured block-0 second moment m0: m0 2^l (no normalizer) and m0 + l
    # (each normalized branch adds 1: the law's l + 1 when the stream enters with 1)
    m0_none = f["second_moment"]["none"][:, 0].mean()
    m0_bn = f["second_moment"]["batchnorm"][:, 0].mean()
    law_none = m0_none * th.resnet_second_moment(s.blocks - 1, "none")
    law_bn = m0_bn - 1 + th.resnet_second_moment(s.blocks - 1, "batchnorm")
    drawn["pre/theory_2^l"] = theory(ax, blocks, law_none / m0_none, "2^l (no normalizer)")
    drawn["pre/theory_l+1"] = theory(ax, blocks, law_bn / m0_bn, "l + 1 (batchnorm), from block 0")
    ax.lines[-1].set_ls("-.")
    ax.set(xlabel="block l (stage 1)", ylabel="second moment / block 0's",
           title=f"(b) pre-activation ResNet-56 stream, {len(f['second_moment']['none'])} seeds")
    _legend(ax)
    return drawn


register(Figure(
    "resnet_variance", "resnet_variance",
    "[BB] ResNet: the residual stream's variance grows exponentially without activation "
    "normalizers, at most linearly with them", (1, 2), _resnet_variance,
    lambda d: f"ResNet stage 1 ({d.sizes.blocks} blocks), batch {d.sizes.post_batch} / "
              f"{d.sizes.pre_batch}, {d.sizes.seeds} seeds; groupnorm: g = {d.sizes.group_size} "
              f"channels per group ({_groups(d.sizes)} groups) (claims 1, 11)"))


def _groups(s) -> str:
    return "/".join(str(w // s.group_size) for w in s.post_widths)


# ------------------------------------------------------------------- [BB] non-residual CNN


def _cnn_caption(d) -> str:
    s = d.sizes
    arch = s.cfg if s.cfg != "uniform" else f"uniform CNN depth {s.depth} width {s.width}"
    return f"{arch}, batch {s.batch}, {s.seeds} seeds"


def _cnn_cosine(d, axes) -> dict:
    s, drawn = d.sizes, {}
    ax = axes[0]
    for label in ["layernorm", bb.group_label(s.gn_large), bb.group_label(s.gn_small),
                  "instancenorm", "batchnorm"]:
        run = d.run(f"cnn/{label}")
        c = group_color(int(label[12:-1]), s.group_sizes) if label.startswith("group") \
            else color(label)
        drawn[f"norms/{label}"] = band(ax, run.cosine_similarity, label, color=c)
    ax.set(xlabel="layer", ylabel="cosine similarity", title="(a) per normalizer")
    _legend(ax)
    ax = axes[1]
    for g in s.group_sizes:
        run = d.run(f"cnn/{bb.gn_run(s, g)}")
        drawn[f"groups/{g}"] = band(ax, run.cosine_similarity, f"g = {g}"
                                    + {"instancenorm": " (IN)", "layernorm": " (LN)"}.get(
                                        bb.gn_run(s, g), ""), color=group_color(g, s.group_sizes))
    ax.set(xlabel="layer", ylabel="cosine similarity",
           title="(b) groupnorm, group size g (channels per group)")
    _legend(ax)
    return drawn


register(Figure(
    "cnn_cosine", "cnn_groupnorm",
    "[BB] Non-residual CNN: larger groups, more similar samples (final-layer cosine: LN > GN "
    "large > GN small > IN)", (1, 2), _cnn_cosine, lambda d: _cnn_caption(d) + " (claim 2)"))


def _groupnorm_rank(d, axes) -> dict:
    s, drawn = d.sizes, {}
    t = _v.rank_trend(d)
    g = np.array(t["sizes"], float)
    for ax, key, label in ((axes[0], "effective", "effective rank"),
                           (axes[1], "stable", "stable rank")):
        runs = [d.run(bb.rank_run(s, int(x))) for x in g]
        vals = np.stack([r.effective_rank[:, -1] if key == "effective" else r.stable_rank[:, -1]
                         for r in runs], axis=1)
        drawn[f"{key}/measured"] = band(ax, vals, "measured (final layer)", x=g,
                                        color=color("groupnorm"))
        # the trend a sqrt(width / g) + b, least squares over the group sizes
        basis = np.sqrt(s.rank_width / g)
        mean = vals.mean(axis=0)
        a, b = np.polyfit(basis, mean, 1)
        r2 = 1 - np.sum((mean - a * basis - b) ** 2) / np.sum((mean - mean.mean()) ** 2)
        drawn[f"{key}/fit"] = theory(ax, g, a * basis + b,
                                     f"fit {a:.2f} sqrt(width / g) + {b:.2f}")
        drawn[f"{key}/fit_coefficients"] = np.array([a, b])
        ax.set_xscale("log", base=2)
        ax.set(xlabel="group size g", ylabel=label,
               title=f"({'ab'[key == 'stable']}) {label}: fit R^2 = {r2:.2f}")
        _legend(ax)
    return drawn


register(Figure(
    "groupnorm_rank", "cnn_groupnorm",
    "[BB] GroupNorm: the final layer's rank falls with the group size; the sqrt(width / g) "
    "trend fitted (R^2 in the panel titles)",
    (1, 2), _groupnorm_rank,
    lambda d: f"uniform CNN depth {d.sizes.rank_depth} width {d.sizes.rank_width}, batch "
              f"{d.sizes.batch}, {d.sizes.seeds} seeds (claim 3)"))


def _cnn_gradients(d, axes) -> dict:
    s, drawn = d.sizes, {}
    ax = axes[0]
    for g in s.group_sizes:
        label = bb.gn_run(s, g)
        if label in ("instancenorm", "layernorm"):
            continue
        run = d.run(f"cnn/{label}")
        drawn[f"grad/{label}"] = band(ax, run.grad_norm, f"groupnorm g = {g}",
                                      color=group_color(g, s.group_sizes), log=True)
    for label in ("instancenorm", "layernorm", "batchnorm"):
        run = d.run(f"cnn/{label}")
        drawn[f"grad/{label}"] = band(ax, run.grad_norm, label, color=color(label), log=True)
    ax.set(xlabel="layer (gradient taps, input to output)", ylabel="gradient norm",
           title="(a) per-layer gradient norm")
    _legend(ax, ncol=2)
    ax = axes[1]
    labels = ["instancenorm"] + [bb.group_label(g) for g in s.group_sizes
                                 if bb.gn_run(s, g) == bb.group_label(g)] + ["layernorm",
                                                                             "batchnorm"]
    ratios = [float(np.mean(d.run(f"cnn/{k}").grad_norm[:, 0] / d.run(f"cnn/{k}").grad_norm[:, -1]))
              for k in labels]
    cols = [color(k) if not k.startswith("group") else group_color(int(k[12:-1]), s.group_sizes)
            for k in labels]
    ax.bar(range(len(labels)), ratios, color=cols)
    ax.set_xticks(range(len(labels)), [k.replace("groupnorm", "GN") for k in labels],
                  rotation=35, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set(ylabel="first / last layer gradient norm", title="(b) early / late gradient norm")
    drawn["ratio"] = np.array(ratios)
    drawn["ratio_labels"] = np.array(labels)
    return drawn


register(Figure(
    "cnn_gradients", "cnn_groupnorm",
    "[BB] Non-residual CNN: early-layer gradients largest for instancenorm, falling with the "
    "group size, smallest for layernorm; batchnorm's explode", (1, 2), _cnn_gradients,
    lambda d: _cnn_caption(d) + " (claim 4)", size=(11.0, 4.6)))


# ---------------------------------------------------------------------------- [U] Figure 1


def _u_figure1(d, axes) -> dict:
    s, drawn = d.sizes, {}
    for ax, metric, title in ((axes[0], "similar_batch_correlation",
                               "(a) similar-batch correlation"),
                              (axes[1], "gradient_correlation", "(b) gradient correlation")):
        for norm in unique.U_NORMS:
            run = d.run(f"mlp/{norm}")
            drawn[f"{metric}/{norm}"] = band(ax, getattr(run, metric), norm, x=np.arange(
                1, getattr(run, metric).shape[-1] + 1), color=color(norm))
        ax.set(xlabel="depth (layer)", ylabel=metric.replace("_", " "), title=title)
    _legend(axes[0])
    return drawn


register(Figure(
    "u_figure1", "similar_batches",
    "[U] Figure 1: ReLU MLP on real MNIST: batchnorm decorrelates similar batches and "
    "gradients, layernorm keeps them correlated", (1, 2), _u_figure1,
    lambda d: f"ReLU MLP depth {d.sizes.depth} width {d.sizes.width}, batch {d.sizes.batch}, "
              f"{d.sizes.seeds} seeds (claims 5, 6)"))


# ---------------------------------------------------------------------------- [U] Figure 2


def _u_figure2(d, axes) -> dict:
    s, drawn = d.sizes, {}
    rate = th.bn_gradient_explosion_rate("relu")
    for row, (kind, norms) in enumerate((("noskip", s.norms), ("skip", s.skip_norms))):
        ax_c, ax_g = axes[2 * row], axes[2 * row + 1]
        for norm in norms:
            run = d.run(f"{kind}/{norm}")
            drawn[f"{kind}/similar/{norm}"] = band(ax_c, run.similar_batch_correlation, norm,
                                                   color=color(norm))
            main = run.index(lambda n: not n.endswith("shortcut"), "grad_layer_names")
            drawn[f"{kind}/grad/{norm}"] = band(ax_g, run.grad_norm[:, main], norm,
                                                color=color(norm), log=True)
            if norm == "batchnorm":
                g = run.mean("grad_norm")[main]
                x = np.arange(len(main))
                # the BN rate: ||g|| grows by sqrt(pi / (pi - 1)) per layer going backward,
                # anchored at the last layer
                law = g[-1] * np.sqrt(rate) ** (x[-1] - x)
                drawn[f"{kind}/grad/theory"] = theory(ax_g, x, law,
                                                      "batchnorm rate (pi/(pi-1))^(1/2)")
        title = "without skips" if kind == "noskip" else "with skips (appendix)"
        ax_c.set(xlabel="layer", ylabel="similar-batch correlation",
                 title=f"({'ac'[row]}) {title}")
        ax_g.set(xlabel="layer (main-path gradient taps)", ylabel="gradient norm",
                 title=f"({'bd'[row]}) {title}")
        _legend(ax_c)
        _legend(ax_g)
    return drawn


register(Figure(
    "u_figure2", "wrn",
    "[U] Figure 2: WideResNet: batchnorm's gradients explode with depth without skips "
    "(rate pi/(pi-1)), not with skips", (2, 2), _u_figure2,
    lambda d: f"WRN-{d.sizes.depth}-{d.sizes.k}, batch {d.sizes.batch}, {d.sizes.seeds} seeds "
              f"({d.sizes.claim7_seeds} for batchnorm; mean over seeds, band min-max) (claim 7)",
    size=(11.0, 8.0)))


# ---------------------------------------------------------------------------- closed forms


def _closed_forms(d, axes) -> dict:
    s, drawn = d.sizes, {}
    ax = axes[0]
    run = d.run("arccos")
    x = np.arange(1, s.arccos_depth + 1)
    drawn["cosine/measured"] = band(ax, run.cosine_similarity, "measured (no normalizer)",
                                    x=x, color=color("none"))
    drawn["cosine/theory"] = theory(ax, x, d["theory/arccos_cosine"],
                                    "iterated arc-cosine map (Cho & Saul)")
    ax.set(xlabel="layer", ylabel="cosine similarity",
           title=f"(a) ReLU MLP width {s.wide}, He init")
    _legend(ax)
    ax = axes[1]
    run = d.run("bn_mlp")
    g = run.grad_norm
    x = np.arange(g.shape[-1])
    drawn["grad/measured"] = band(ax, g, "measured (batchnorm)", x=x, color=color("batchnorm"),
                                  log=True)
    rate = float(d["theory/bn_rate"])
    mean = g.mean(axis=0)
    law = mean[-3] * np.sqrt(rate) ** (x[-3] - x)  # anchored at the last interior layer
    drawn["grad/theory"] = theory(ax, x, law, f"squared norm x pi/(pi-1) = {rate:.4f} per layer")
    drawn["grad/fitted_rate"] = np.array(_v.bn_rate(run))
    ax.set(xlabel="layer (input to output)", ylabel="gradient norm",
           title=f"(b) batchnorm ReLU MLP, batch {s.bn_batch}: fitted rate "
                 f"{_v.bn_rate(run):.3f}")
    _legend(ax)
    return drawn


register(Figure(
    "closed_forms", "closed_forms",
    "Closed forms beside measurement: the arc-cosine map and batchnorm's gradient explosion",
    (1, 2), _closed_forms,
    lambda d: f"MLP width {d.sizes.wide}, depth {d.sizes.arccos_depth} / {d.sizes.bn_depth}, "
              f"{d.sizes.arccos_seeds} / {d.sizes.seeds} seeds (claims 9, 10)"))


# ------------------------------------------------------------------------- Brock et al. SPP


def nf_law(s) -> np.ndarray:
    """The NF-ResNet's analytic stream variance at each block's output, the one its betas use:
    ``1 + (l + 1) alpha^2`` after block l of a stage, from ``Var(h_0) = 1`` in the first stage
    and from the transition block's reset to ``1 + alpha^2`` in the others."""
    a2 = float(s.nf_alpha) ** 2
    return np.tile(1.0 + a2 * np.arange(1, s.blocks + 1), len(s.widths))


def _brock(d, axes) -> dict:
    s, drawn = d.sizes, {}
    for ax, metric, title in ((axes[0], "channel_squared_mean", "(a) average channel squared mean"),
                              (axes[1], "activation_variance", "(b) average channel variance"),
                              (axes[2], "residual_variance", "(c) residual-branch variance")):
        for label in bb.BROCK:
            run = d.run(f"spp/{label}")
            if metric == "residual_variance":
                v = getattr(run, metric)
            else:
                v = getattr(run, metric)[:, run.index(lambda n: n.endswith("/out"))]
            drawn[f"{metric}/{label}"] = band(ax, v, bb.brock_legend(label, s),
                                              x=np.arange(1, v.shape[-1] + 1),
                                              color=color(label), log=True)
        ax.set(xlabel="residual block (all stages)", title=title)
    x = np.arange(1, s.blocks * len(s.widths) + 1)
    drawn["residual_variance/nf_law"] = theory(axes[2], x, np.full(len(x), s.nf_alpha ** 2),
                                               f"NF: alpha^2 = {s.nf_alpha ** 2:g}")
    axes[2].set_title("(c) residual-branch variance (NF: ~alpha^2; BN: ~1 - 1/pi)")
    # (d) the NF-ResNet's stream on a linear scale, beside the variance its betas assume
    ax, run = axes[3], d.run("spp/sws+nf")
    v = run.activation_variance[:, run.index(lambda n: n.endswith("/out"))]
    band(ax, v, "measured", x=x, color=color("sws"))
    law = nf_law(s)
    for i in range(len(s.widths)):  # one dashed segment per stage (the reset is no line)
        seg = slice(i * s.blocks, (i + 1) * s.blocks)
        theory(ax, x[seg], law[seg], "analytic 1 + l alpha^2 (the betas')" if i == 0 else None)
    drawn["nf_stream/law"] = law
    ax.set(xlabel="residual block (all stages)", ylabel="average channel variance",
           title=f"(d) NF-ResNet stream (alpha = {s.nf_alpha:g}), linear scale")
    _legend(axes[0])
    _legend(axes[2])
    _legend(ax)
    return drawn


register(Figure(
    "brock_spp", "brock_spp",
    "Brock et al.'s signal-propagation plot: batchnorm, no normalizer (exponential), and\ntheir "
    "NF-ResNet (sws, alpha = 0.2, beta scaling): variance ~1 + l alpha^2 within a stage",
    (2, 2), _brock,
    lambda d: f"pre-activation ResNet {d.sizes.blocks} blocks x widths {tuple(d.sizes.widths)}, "
              f"batch {d.sizes.batch}, {d.sizes.seeds} seeds; dashed: analytic (NF), zero "
              "padding of the 3x3 convs lowers the measured", size=(11.0, 8.0)))
