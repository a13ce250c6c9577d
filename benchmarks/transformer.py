"""Issue 21's benchmark: ``analyze`` with every token metric vs a bare jitted forward + backward.

A 12-block, width-256, 4-head Pre-LN transformer on continuous N(0, 1) tokens, B = 16, T = 128,
8 seeds in one call. ``analyze`` records, at every activation tap, the per-sequence token Gram
matrices (token cosine, residual ratio, stable and effective rank) and max|x| / median|x|; at
every attention, the entropy and the largest logit; for every weight, ||dL/dW||. The bare
program is the same network's init + forward + backward w.r.t. the parameters (the same loss,
no tap recording anything), vmapped over the same 8 seeds. Target: analyze / bare <= 1.5.

    python benchmarks/transformer.py [--quick] [--repeats N] [--metrics a,b,...]

Prints the medians of interleaved repeats (after one compile call each) and their ratio, plus the
ratio of each metric family alone (what the overhead is made of).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import sigprop
from sigprop.backend import xla_cpu
from sigprop.core import engine
from sigprop.taps import probe


def bare_forward_backward(model, x, seeds: int):
    """Init + forward + backward w.r.t. the parameters, every tap the identity (nothing mutable,
    no probes), vmapped over the seeds' init and label keys as the engine splits them."""

    def one(key):
        _, k_run = jax.random.split(key)
        k_init, k_label = jax.random.split(k_run)
        v = model.init(k_init, x)
        rest = {c: a for c, a in v.items() if c not in (probe.PROBES, "params")}

        def loss(params):
            out = model.apply({"params": params, **rest}, x)
            return engine.default_loss(out, k_label)

        return jax.grad(loss)(v["params"])

    @xla_cpu.fast_rng
    @jax.jit
    def run(keys):
        with jax.default_matmul_precision("highest"):
            return jax.vmap(one)(keys)

    keys = engine.seed_keys(jax.random.key(0), seeds)
    return lambda: jax.block_until_ready(run(keys))


def analysis(model, x, seeds: int, metrics):
    return lambda: sigprop.analyze(model, x, seeds=seeds, metrics=metrics)


def eigenvalue_bound(taps: int, b: int, t: int, seeds: int):
    """The token metrics' eigenvalue problems alone, as the spectral step solves them: one
    ``t x t`` float64 Gram matrix per sequence, activation tap and seed, twice (the Gram matrix
    for the effective rank, the unit-token one for the stable rank), batched LAPACK calls.
    Returns a callable that times them (on random Gram matrices of that shape)."""
    from sigprop.backend import lapack

    n = 2 * taps * b * seeds
    with jax.enable_x64(True):
        m = jax.random.normal(jax.random.key(0), (n, t, t), jnp.float64)
        g = m @ jnp.swapaxes(m, -1, -2)
        solve = jax.jit(lapack.eigvalsh)

        def run():
            with jax.enable_x64(True):
                jax.block_until_ready(solve(g))

    return n, run


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small net (seconds), for the tests")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--metrics", default=None, help="comma-separated (default: every token, "
                   "attention and parameter metric)")
    args = p.parse_args(argv)
    depth, width, heads, b, t, seeds = (2, 32, 4, 4, 16, 2) if args.quick else (12, 256, 4, 16,
                                                                                128, 8)
    model = sigprop.transformer(depth, width, heads, placement="pre", causal=True)
    x = jax.random.normal(jax.random.key(1), (b, t, width), jnp.float32)
    every = sigprop.metrics.TRANSFORMER_METRICS
    metrics = tuple(args.metrics.split(",")) if args.metrics else every
    fns = {"bare": bare_forward_backward(model, x, seeds),
           "analyze": analysis(model, x, seeds, metrics)}
    if not args.metrics and not args.quick:
        fns["token metrics only"] = analysis(model, x, seeds, sigprop.metrics.TOKEN_METRICS)
        fns["attention + max_abs only"] = analysis(model, x, seeds, (
            "attention_entropy", "attention_logit_max", "max_abs_ratio"))
        fns["param_grad_norm only"] = analysis(model, x, seeds, ("param_grad_norm",))
    print(f"transformer depth {depth}, width {width}, heads {heads}, B {b}, T {t}, seeds "
          f"{seeds}, placement pre; jax {jax.__version__} on {jax.devices()[0].platform}")
    first = {k: timed(f) for k, f in fns.items()}
    times = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, f in fns.items():
            times[k].append(timed(f))
    bare = statistics.median(times["bare"])
    for k in fns:
        med = statistics.median(times[k])
        print(f"  {k:26s} first call {first[k]:7.2f} s, steady {med:7.3f} s, "
              f"/ bare {med / bare:5.2f}")
    ratio = statistics.median(times["analyze"]) / bare
    verdict = "PASS" if ratio <= 1.5 else "FAIL"
    print(f"analyze ({len(metrics)} metrics) / bare forward + backward = {ratio:.2f} "
          f"(target <= 1.5: {verdict})")
    if any(m in metrics for m in ("token_effective_rank", "token_stable_rank")):
        taps = len(sigprop.layer_names(model, x)["layer"])
        n, run = eigenvalue_bound(taps, b, t, seeds)
        run()
        eig = statistics.median(timed(run) for _ in range(args.repeats))
        print(f"bound: the {n} eigenvalue problems of {t} x {t} ({taps} taps x {b} sequences x "
              f"{seeds} seeds x 2 spectra) alone take {eig:.2f} s = {eig / bare:.2f} of the bare "
              f"pass: analyze / bare >= {1 + eig / bare:.2f} with every other cost free")


if __name__ == "__main__":
    main()
