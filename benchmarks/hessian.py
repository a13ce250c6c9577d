"""The Hessian spectrum's costs, as ratios measured in this run.

- ``step / (fwd + bwd)``: one Lanczos step of ``sigprop.hessian`` (a linearized Hessian-vector
  product plus full reorthogonalization against the stored basis) over one jitted forward +
  backward pass (``jax.grad`` of the same loss, same net and batch). The step time is the
  slope ``(t(order_hi) - t(order_lo)) / (order_hi - order_lo)`` of a jitted single-probe
  Lanczos run; ``run / order`` is printed too, at ``order_hi`` and at ``spectrum``'s default
  order 90. Full reorthogonalization reads the ``i`` rows stored before step ``i`` (block by
  block, ``sigprop.lanczos.BLOCK`` rows), so the step cost grows with the step index
  (memory-bound on CPU): the slope is the mean step of steps ``order_lo .. order_hi``.
  The Lanczos runs compile with ``sigprop.xla_cpu.loop_options()``, as ``hessian.spectrum``'s
  program does; the forward + backward with jax's defaults (faster for it). Target (issue): <= 3. Printed beside it, to split the step: one Hessian-vector product
  alone and one projection against ``order_hi`` stored rows alone, each over the forward +
  backward.
- ``compile order 90 / order 10``: lowering + compiling ``sigprop.hessian.spectrum``'s program
  at order 90 over order 10 (the scan body does not depend on the order). Target: <= 1.5.

    python benchmarks/hessian.py [--depth 10 --width 256 --batch 128 --norm layernorm]
        [--repeats 5] [--cnn]   # --cnn: cfg_10 on 32x32 images instead of the MLP
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
from sigprop import nn as models
from sigprop.analyses import hessian
from sigprop.analyses import lanczos as lanczos_lib
from sigprop.backend import xla_cpu
from sigprop.core import engine
from sigprop.core import objective as objective_lib


def _interleaved_min(fns: dict, repeats: int, cheap: tuple = ()) -> dict:
    """``{name: min seconds}`` over ``repeats`` rounds, each calling every function once (so
    the machine's load hits them alike; the minimum is the least disturbed run); the ``cheap``
    ones 10 times a round (a few ms each: their minimum needs more samples)."""
    for fn, args in fns.values():
        jax.block_until_ready(fn(*args))
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, (fn, args) in fns.items():
            for _ in range(10 if k in cheap else 1):
                start = time.perf_counter()
                jax.block_until_ready(fn(*args))
                best[k] = min(best[k], time.perf_counter() - start)
    return best


def _compile_seconds(obj, shape, order, probes):
    """Lower + compile time of spectrum's core (what ``hessian.spectrum`` runs) at ``order``."""
    keys = jax.random.key_data(engine.seed_keys(jax.random.key(0), 1))
    flags = tuple(True for _ in jax.tree_util.tree_leaves(
        obj.split(jax.eval_shape(obj.init, jax.random.key(0),
                                 jax.ShapeDtypeStruct(shape, jnp.float32)))[0]))
    start = time.perf_counter()
    hessian._core.lower(net=obj.net, loss_fn=None, flags=flags, shape=shape, order=order,
                        batch=max(1, probes - 1), batches=1 if probes > 1 else 0,
                        gauss_newton=False, vmapped=hessian._vmapped(), precision="highest",
                        impl="threefry2x32",
                        keys=keys, x=None, given=None, labels=None).compile()
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--norm", default="layernorm")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--cnn", action="store_true", help="cfg_10 on 32x32x3 images")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--orders", type=int, nargs=2, default=(10, 30),
                   help="the two orders whose time difference gives the step time")
    args = p.parse_args(argv)
    if args.cnn:
        model = models.cnn("cfg_10", norm=args.norm, n_classes=args.classes)
        shape = (args.batch, 32, 32, 3)
    else:
        model = models.mlp(args.depth, args.width, norm=args.norm, n_classes=args.classes)
        shape = (args.batch, args.width)
    obj, *_ = objective_lib.objective(model, shape)
    x = jax.random.normal(jax.random.key(1), shape)
    labels = jnp.arange(args.batch) % args.classes
    params, rest = obj.split(obj.init(jax.random.key(0), x))
    n = objective_lib.count(params)
    print(f"backend {jax.default_backend()}: {type(model).__name__} norm={args.norm} "
          f"inputs={shape}, {n} parameters")

    grad = jax.jit(lambda p: jax.grad(lambda q: obj.loss(q, rest, x, labels)[0])(p))

    def run(order):  # compiled as sigprop.hessian compiles its program
        @functools.partial(jax.jit, compiler_options=xla_cpu.loop_options())
        def go(p, v0):
            matvec = hessian.hvp_fn(obj, p, rest, x, labels)
            return lanczos_lib.lanczos(matvec, v0, order)

        return go

    v0 = jax.random.normal(jax.random.key(2), (n,))
    lo, hi = args.orders
    hvp = jax.jit(lambda p, v: hessian.hvp_fn(obj, p, rest, x, labels)(v),
                  compiler_options=xla_cpu.loop_options())
    project = jax.jit(lanczos_lib._project_out)
    rows = -(-hi // lanczos_lib.BLOCK) * lanczos_lib.BLOCK  # whole blocks, as in a run
    basis = jax.random.normal(jax.random.key(3), (rows, n))
    best = _interleaved_min({"grad": (grad, (params,)), "lo": (run(lo), (params, v0)),
                             "hi": (run(hi), (params, v0)), "90": (run(90), (params, v0)),
                             "hvp": (hvp, (params, v0)),
                             "project": (project, (basis, v0, jnp.int32(hi)))}, args.repeats,
                            cheap=("grad", "hvp", "project"))
    t_grad, t_lo, t_hi = best["grad"], best["lo"], best["hi"]
    step = (t_hi - t_lo) / (hi - lo)
    print(f"fwd+bwd {t_grad * 1e3:.1f} ms; Lanczos order {lo}: {t_lo * 1e3:.0f} ms, order {hi}: "
          f"{t_hi * 1e3:.0f} ms (minima of {args.repeats} interleaved rounds)")
    print(f"step / (fwd + bwd)            {step / t_grad:6.2f}   (target <= 3)")
    print(f"run / order / (fwd + bwd)     {t_hi / hi / t_grad:6.2f}   (order {hi}); "
          f"{best['90'] / 90 / t_grad:.2f} (order 90)")
    print(f"  of which: one HVP alone     {best['hvp'] / t_grad:6.2f}   "
          f"one projection on {hi} rows {best['project'] / t_grad:.2f}")

    c10 = _compile_seconds(obj, shape, 10, probes=2)
    c90 = _compile_seconds(obj, shape, 90, probes=2)
    print(f"compile order 90 / order 10   {c90 / c10:6.2f}   ({c90:.1f} s / {c10:.1f} s; target "
          "<= 1.5)")


if __name__ == "__main__":
    main()
