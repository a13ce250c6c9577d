"""XLA's convolution vs sigprop's shift-and-matmul convolution, forward + input gradient.

Prints, per conv shape of cfg_10 / resnet56, the time ratio xla / shift measured in this run
(> 1: shift is faster). ``sigprop.models.layers.conv2d(impl="auto")`` picks shift on CPU for
strided convs and outputs of at most 2x2, where this ratio is large.

    python benchmarks/conv_impl.py [--batch 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from sigprop.models.layers import conv2d

SHAPES = [  # (spatial, cin, cout, stride)
    (32, 3, 64, 1), (32, 64, 64, 2), (16, 64, 128, 1), (16, 128, 128, 2), (8, 128, 256, 1),
    (8, 256, 256, 2), (4, 256, 512, 1), (4, 512, 512, 2), (2, 512, 512, 1), (32, 32, 32, 1),
]


def _time(fn, *args, repeats):
    fn(*args).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        fn(*args).block_until_ready()
    return (time.perf_counter() - start) / repeats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    print(f"backend: {jax.default_backend()}, batch {args.batch}")
    print(f"{'H':>3} {'cin':>4} {'cout':>4} {'s':>2} {'xla/shift':>10} {'auto picks':>11}")
    for h, cin, cout, s in SHAPES:
        k1, k2 = jax.random.split(jax.random.key(0))
        x = jax.random.normal(k1, (args.batch, h, h, cin))
        w = jax.random.normal(k2, (3, 3, cin, cout)) * (2.0 / (9 * cin)) ** 0.5
        times = {}
        for impl in ("xla", "shift"):
            f = jax.jit(jax.grad(lambda x, w, impl=impl: jnp.sum(conv2d(x, w, s, impl) ** 2)))
            times[impl] = _time(f, x, w, repeats=args.repeats)
        ho = (h - 1) // s + 1
        auto = "shift" if jax.default_backend() == "cpu" and (s > 1 or ho * ho <= 4) else "xla"
        print(f"{h:>3} {cin:>4} {cout:>4} {s:>2} {times['xla'] / times['shift']:>10.2f} {auto:>11}")


if __name__ == "__main__":
    main()
