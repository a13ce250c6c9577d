"""XLA's convolution vs sigprop's conv implementations, forward + input gradient.

Prints, per conv shape of cfg_10 / resnet56, time ratios measured in this run (> 1: the second
is faster):

- ``xla/shift``: ``lax.conv`` with JAX's own gradient vs the shift-and-matmul form, one conv;
- ``scan: lax/xla``: the same conv as a 3-layer ``lax.scan`` (as in a scanned stack of layers),
  ``lax.conv`` with JAX's own gradient vs ``conv2d(impl='xla')``, whose input gradient on CPU is
  an explicit conv with the transposed kernel (stride 1 only; inside a scan XLA:CPU otherwise
  runs JAX's transposed conv as a naive loop).

``sigprop.models.layers.conv2d(impl="auto")`` picks shift on CPU for strided convs and outputs of
at most 2x2, where ``xla/shift`` is large, and xla elsewhere.

    python benchmarks/conv_impl.py [--batch 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from sigprop.backend import cpu
from sigprop.nn.layers import _xla_conv, conv2d

SHAPES = [  # (spatial, cin, cout, stride)
    (32, 3, 64, 1), (32, 64, 64, 2), (16, 64, 128, 1), (16, 128, 128, 2), (8, 128, 256, 1),
    (8, 256, 256, 2), (4, 256, 512, 1), (4, 512, 512, 2), (2, 512, 512, 1), (32, 32, 32, 1),
    (16, 64, 64, 1), (8, 128, 128, 1),
]


def _time(fn, *args, repeats):
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) / repeats


def _scan_grad(conv):
    """d/dx of a 3-layer scan of ``conv`` (same kernel shape in and out)."""

    def net(x, ws):
        y, _ = jax.lax.scan(lambda h, w: (jax.nn.relu(conv(h, w)), None), x, ws)
        return jnp.sum(y ** 2)

    return jax.jit(jax.grad(net))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    print(f"backend: {jax.default_backend()}, batch {args.batch}")
    print(f"{'H':>3} {'cin':>4} {'cout':>4} {'s':>2} {'xla/shift':>10} {'scan: lax/xla':>14} "
          f"{'auto picks':>11}")
    for h, cin, cout, s in SHAPES:
        k1, k2 = jax.random.split(jax.random.key(0))
        x = jax.random.normal(k1, (args.batch, h, h, cin))
        w = jax.random.normal(k2, (3, 3, cin, cout)) * (2.0 / (9 * cin)) ** 0.5
        times = {}
        for impl in ("xla", "shift"):
            f = jax.jit(jax.grad(lambda x, w, impl=impl: jnp.sum(conv2d(x, w, s, impl) ** 2)))
            times[impl] = _time(f, x, w, repeats=args.repeats)
        scan = "-"
        if s == 1 and cin == cout:
            ws = jnp.stack([w] * 3)
            t_lax = _time(_scan_grad(lambda h, w: _xla_conv(h, w, 1, 1)), x, ws, repeats=args.repeats)
            t_xla = _time(_scan_grad(lambda h, w: conv2d(h, w, 1, "xla")), x, ws, repeats=args.repeats)
            scan = f"{t_lax / t_xla:.2f}"
        ho = (h - 1) // s + 1
        auto = "shift" if cpu.shift_conv(s, ho * ho) else "xla"
        print(f"{h:>3} {cin:>4} {cout:>4} {s:>2} {times['xla'] / times['shift']:>10.2f} "
              f"{scan:>14} {auto:>11}")


if __name__ == "__main__":
    main()
