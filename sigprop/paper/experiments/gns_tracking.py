"""The gradient noise scale of the normalization layers through early training (Gray et al.
2024; claim 19): does the LayerNorms' ``B_simple`` track the whole model's?

Setting: a causal Pre-LN transformer language model (:func:`sigprop.transformer` with
``vocab``) trained with Adam on sequences of a fixed synthetic language: an order-1 Markov
chain over ``vocab`` symbols whose transition rows are drawn once from ``Dirichlet(0.1)`` (seed
:data:`LANGUAGE_SEED`; the first symbol uniform), so the data are unlimited and learnable. The
loss is the mean next-token cross-entropy. At steps ``0, k, 2k, ..., steps`` the same held-out
probe batch of ``probe`` sequences gives

- the normalization layers' estimates: ``sigprop.analyze(model, probe, variables=params,
  metrics=gns_*)`` (per-example gradients of every LayerNorm's scale and bias from the taps'
  backward pass, :mod:`sigprop.metrics.gns`), ``B_norm = sum_l tr Sigma_l / sum_l |G_l|^2``;
- the whole model's: every parameter's per-example gradient from ``jax.vmap(jax.grad(...))``
  of each sequence's own loss, and the same estimators (:func:`sigprop.metrics.gns.estimates`),
  ``B_model``.

Each seed draws its own init and training batches; the probe batch is one for all (drawn by its
own generator), so that each program compiles once. Saved (``[seeds, records]``
unless said): ``steps [records]``, ``norm/b_simple``, ``norm/trace``, ``norm/grad_sq``,
``model/b_simple``, ``model/trace``, ``model/grad_sq``, ``loss`` (the probe batch's), and
``layers/b_simple [seeds, records, layers]`` with ``layers/names``.

References: McCandlish et al. 2018, arXiv 1812.06162 (B_simple and its estimators); Gray et
al. 2024, NeurIPS, arXiv 2411.00999.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from sigprop import nn as models
from sigprop.analyses.analyze import analyze
from sigprop.metrics import gns
from sigprop.paper.experiments import Experiment, register

LANGUAGE_SEED = 1234
DIRICHLET = 0.1
METRICS = ("gns_b_simple", "gns_trace_sigma", "gns_grad_sq")


def language(vocab: int) -> np.ndarray:
    """The transition matrix ``[vocab, vocab]`` of the synthetic language (rows sum to 1)."""
    rng = np.random.default_rng(LANGUAGE_SEED)
    return rng.dirichlet(np.full(vocab, DIRICHLET), size=vocab)


def sample(trans: np.ndarray, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, length]`` int32 sequences of the chain ``trans``."""
    v = trans.shape[0]
    cum = np.cumsum(trans, axis=1)
    x = np.empty((n, length), np.int32)
    x[:, 0] = rng.integers(0, v, n)
    for t in range(1, length):
        u = rng.random(n)
        x[:, t] = np.minimum((u[:, None] > cum[x[:, t - 1]]).sum(axis=1), v - 1)
    return x


def _ce(logits, targets):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


def next_token_loss(targets):
    """``loss(outputs, key)`` for ``analyze``: the mean cross-entropy against ``targets``
    ``[B, T]`` (a mean over the sequences of each sequence's mean)."""
    targets = jnp.asarray(targets)
    return lambda outputs, key: _ce(outputs, targets)


def _trainer(model, rate: float):
    opt = optax.adam(rate)  # model: sigprop.transformer(..., vocab=...)

    def loss_fn(params, tokens):
        return _ce(model.apply({"params": params}, tokens[:, :-1]), tokens[:, 1:])

    @jax.jit
    def step(params, state, tokens):
        grads = jax.grad(loss_fn)(params, tokens)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    @jax.jit
    def whole_model(params, tokens):
        def one(p, seq):
            return loss_fn(p, seq[None])
        per = jax.vmap(jax.grad(one), in_axes=(None, 0))(params, tokens)
        flat = jax.vmap(lambda g: ravel_pytree(g)[0])(per)
        return flat, loss_fn(params, tokens)

    return model, opt, step, whole_model


def probe_batch(s) -> np.ndarray:
    """The held-out probe sequences ``[probe, seq_len + 1]`` (their own generator)."""
    return sample(language(s.vocab), s.probe, s.seq_len + 1,
                  np.random.default_rng(LANGUAGE_SEED + 1))


def run_seed(s, seed: int, probe: np.ndarray, trainer, loss) -> dict:
    """One seed's training run and its records (see the module docstring): ``trainer`` is
    ``_trainer(model, rate)``, ``loss`` the probe batch's (shared by the seeds, so each is
    compiled once)."""
    trans = language(s.vocab)
    rng = np.random.default_rng(seed)
    model, opt, step, whole_model = trainer
    params = model.init(jax.random.key(seed), jnp.asarray(probe[:, :-1]))["params"]
    state = opt.init(params)
    out: dict = {k: [] for k in ("norm", "model", "loss", "layers")}
    names = ()
    for t in range(s.steps + 1):
        if t % s.record_every == 0:
            res = analyze(model, probe[:, :-1], variables={"params": params}, metrics=METRICS,
                          loss=loss)
            names = res.norm_layer_names
            tr, gsq = np.asarray(res.gns_trace_sigma[0], float), np.asarray(res.gns_grad_sq[0],
                                                                              float)
            out["norm"].append((gsq.sum(), tr.sum(), tr.sum() / gsq.sum()))
            out["layers"].append(np.asarray(res.gns_b_simple[0], float))
            flat, value = whole_model(params, jnp.asarray(probe))
            out["model"].append(tuple(float(v) for v in gns.estimates(np.asarray(flat))))
            out["loss"].append(float(value))
        if t < s.steps:
            batch = sample(trans, s.batch, s.seq_len + 1, rng)
            params, state = step(params, state, jnp.asarray(batch))
    return {"norm": np.array(out["norm"]), "model": np.array(out["model"]),
            "loss": np.array(out["loss"]), "layers": np.array(out["layers"]), "names": names}


def _measure(r) -> None:
    s = r.s
    probe = probe_batch(s)
    model = models.transformer(s.depth, s.width, s.heads, vocab=s.vocab, placement="pre")
    trainer, loss = _trainer(model, s.rate), next_token_loss(probe[:, 1:])
    runs = [run_seed(s, seed, probe, trainer, loss) for seed in range(s.seeds)]
    r.put("steps", np.arange(0, s.steps + 1, s.record_every))
    for who in ("norm", "model"):
        for i, field in enumerate(("grad_sq", "trace", "b_simple")):
            r.put(f"{who}/{field}", np.stack([run[who][:, i] for run in runs]))
    r.put("loss", np.stack([run["loss"] for run in runs]))
    r.put("layers/b_simple", np.stack([run["layers"] for run in runs]))
    r.put("layers/names", np.array(runs[0]["names"], dtype=str))
    if r.progress is not None:
        r.progress.advance("gns_tracking")


GNS_TRACKING = register(Experiment(
    "gns_tracking", "Normalization-layer vs whole-model gradient noise scale B_simple through "
                    "early training of a small transformer LM (Gray et al. 2024; claim 19)",
    quick=dict(seeds=3, depth=2, width=32, heads=4, vocab=32, seq_len=16, batch=16, probe=32,
               steps=40, record_every=10, rate=3e-3),
    full=dict(seeds=8, depth=4, width=128, heads=4, vocab=64, seq_len=32, batch=32, probe=64,
              steps=300, record_every=15, rate=1e-3),
    measure=_measure, points=lambda s: 1,
    inputs=lambda s: f"a synthetic order-1 Markov language over {s.vocab} symbols "
                     f"(Dirichlet({DIRICHLET}) rows, seed {LANGUAGE_SEED}), sequences of "
                     f"{s.seq_len + 1}, Adam lr {s.rate:g}, batch {s.batch}, probe batch "
                     f"{s.probe}"))
