"""sigprop vs the same probes in PyTorch ([BB]'s hooks + ``.item()``), ResNet-56 with BatchNorm.

Times, in one run, interleaved, median of ``--repeats`` after warm-up, batch ``--batch``:

- torch (a): benchmarks/torch_probes.py, one forward + one backward with every hook, parameters
  trainable as in [BB]'s ``loss.backward()`` (weight gradients computed too);
- torch (a'): the same with frozen parameters, differentiating w.r.t. the input only;
- sigprop (b): the compiled core of ``sigprop.analyze(model, x, seeds=1)``
  (``sigprop.engine._core``: init, forward with activation taps, backward with gradient taps,
  the spectral step), execution only;
- torch (a-bb), (a'-bb), sigprop (b-bb): the same on [BB]'s metric set only (variance, cosine
  similarity, stable rank, gradient norms: ``analyze(..., metrics=...)``), equal sets on both
  sides;
- sigprop (c): the same network and weights, a bare jitted forward + backward (gradient of the
  loss w.r.t. the input) with only the params passed (no tap collection mutable, no probes:
  every tap is the identity). No init inside: (b) - (c) also holds the He-normal init of one
  network;
- torch (d): the bare forward + backward of (c) in torch (no hooks, input gradient only).

Prints the ratios torch / sigprop and the metrics overhead (b) / (c), each the median of the
per-repeat ratios, sigprop's compile time (first call minus a steady call), and a cross-check:
the torch model loaded with the weights of the timed sigprop run, and the maximum relative
deviation of every metric, between the two and from torch in float64.

    python benchmarks/vs_torch.py [--batch 64] [--repeats 5] [--model resnet56] [--threads N]

``--threads`` pins the process to N cores (default: all) before jax and torch start, so that
both size their thread pools to it. ``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` here: with
torch's spinning OpenMP threads, 2 threads on a shared 2-core machine ran 3-20x slower than 1.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import os
import pathlib
import statistics
import sys
import time

_HERE = pathlib.Path(__file__).resolve().parent

MODELS = ("resnet56",)
jax = jnp = np = optax = torch = sigprop = engine = tp = _analyze = None  # set by _imports()


def _imports(cores):
    """Pin the process to ``cores`` CPUs, then import jax and torch (both size their thread pools
    from the affinity mask when they start)."""
    global jax, jnp, np, optax, torch, sigprop, engine, tp, _analyze
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    # torch's OpenMP threads spin while they wait; on a shared machine (and next to XLA's pool)
    # that made 2 threads 3-20x slower than 1 (svdvals 1.1 s vs 0.06 s). PASSIVE: they sleep.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import sigprop
    import torch
    from sigprop.core import engine

    sys.path.insert(0, str(_HERE))
    import torch_probes as tp

    _analyze = importlib.import_module("sigprop.analyses.analyze")  # the module; sigprop.analyze is analyze()
    torch.set_num_threads(cores)


def _models(name):
    assert name == "resnet56"
    return sigprop.resnet56(norm="batchnorm"), tp.resnet56()


def _bare_forward_backward(model):
    """A jitted ``(variables, x, label_key) -> d loss / d x`` without activation metrics."""

    def loss(x, variables, label_key):
        logits = model.apply(variables, x)
        labels = jax.random.randint(label_key, logits.shape[:1], 0, logits.shape[-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grad = jax.jit(jax.grad(loss))

    def run(variables, x, label_key):
        with jax.default_matmul_precision("highest"):
            return grad(x, variables, label_key)

    return run


BB = ("activation_variance", "cosine_similarity", "stable_rank", "grad_norm")


def _core(model, shape, keys, x, metrics=None):
    """``() -> outputs`` of the compiled core of ``analyze(model, x, seeds=1, metrics=...)``."""
    net, _ = _analyze.network(model, jax.ShapeDtypeStruct(shape, jnp.float32), None)
    args = dict(net=net, make=None, shape=shape, dtype=jnp.float32,
                keys=jax.random.key_data(keys), x=x, variables=None, values=None,
                plan=_analyze.make_plan(metrics, None, False, None), precision="highest",
                impl=str(jax.random.key_impl(keys)))
    return lambda: jax.block_until_ready(engine._core(**args))


def _unpack(out):
    """``(acts [L, 5], grads [G])`` of seed 0 from the core's outputs."""
    acts = np.stack([np.asarray(out[m].value)[0] for m in tp.ACT_METRICS], -1)
    return acts, np.asarray(out["grad_norm"].value)[0]


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _timed_cpu(fn):
    """``(wall seconds, CPU seconds of all this process's threads)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--model", choices=MODELS, default="resnet56")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="CPU cores for both frameworks (default: all); the process is pinned to them")
    args = p.parse_args(argv)

    _imports(args.threads)
    model, net = _models(args.model)
    print(f"{args.model} batchnorm, batch {args.batch}, {args.repeats} repeats after "
          f"{args.warmup} warm-up; pinned to cores {sorted(os.sched_getaffinity(0))} "
          f"of {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()} (interop "
          f"{torch.get_num_interop_threads()}); jax {jax.__version__} {jax.default_backend()}, "
          f"devices {len(jax.devices())}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; sigprop from "
          f"{pathlib.Path(sigprop.__file__).parent}")

    # the input and the keys of analyze(model, x, seeds=1, key=0)
    x = jax.random.normal(jax.random.key(1234), (args.batch, 32, 32, 3), jnp.float32)
    shape = tuple(x.shape)
    keys = engine.seed_keys(jax.random.key(0), 1)
    _, k_run = jax.random.split(keys[0])
    k_init, k_label = jax.random.split(k_run)  # what engine.measure_item uses

    # (b) sigprop, compile
    run_b = _core(model, shape, keys, x)
    t_first_b = _timed(run_b)
    acts, grads = _unpack(run_b())
    run_b_bb = _core(model, shape, keys, x, BB)
    run_b_bb()

    # (c) bare forward + backward, same weights, only the params: every tap an identity
    variables = jax.block_until_ready(jax.jit(model.init)(k_init, x))
    params = {"params": variables["params"]}
    bare = _bare_forward_backward(model)
    t_first_c = _timed(lambda: jax.block_until_ready(bare(params, x, k_label)))

    def run_c():
        return jax.block_until_ready(bare(params, x, k_label))

    # torch, same weights, input and labels
    net = tp.load_sigprop_params(net, variables["params"])
    bare_net = copy.deepcopy(net)  # no hooks
    probes = tp.Probes(net)
    names = sigprop.layer_names(model, shape)
    assert probes.act_names == list(names["layer"]), "activation tap placement differs"
    assert probes.grad_names == list(names["grad_layer"]), "gradient tap placement differs"
    bb_net = copy.deepcopy(net)
    bb_probes = tp.Probes(bb_net, tp.BB_METRICS)
    xt = tp.nhwc_to_nchw(x)
    labels = torch.from_numpy(np.array(jax.random.randint(k_label, (args.batch,), 0,
                                                          model.n_classes), dtype=np.int64))
    run_a = functools.partial(tp.analyze, net, probes, xt, labels, True)
    run_a2 = functools.partial(tp.analyze, net, probes, xt, labels, False)
    run_a_bb = functools.partial(tp.analyze, bb_net, bb_probes, xt, labels, True)
    run_a2_bb = functools.partial(tp.analyze, bb_net, bb_probes, xt, labels, False)

    def run_d():
        for q in bare_net.parameters():
            q.requires_grad_(False)
        xd = xt.detach().requires_grad_(True)
        torch.nn.functional.cross_entropy(bare_net(xd), labels).backward()

    # float64 torch with the same weights: whose float32 roundoff is it?
    net64 = copy.deepcopy(net).double()
    ref_acts, ref_grads = tp.analyze(net64, tp.Probes(net64), xt.double(), labels, False)
    del net64

    def deviations(t_acts, t_grads, o_acts, o_grads):
        dev = {name: tp.relative_deviation(t_acts[:, i], o_acts[:, i]).max()
               for i, name in enumerate(tp.ACT_METRICS)}
        dev["grad_norm"] = tp.relative_deviation(t_grads, o_grads).max()
        return ", ".join(f"{k} {v:.1e}" for k, v in dev.items())

    print(f"\ncross-check, torch loaded with the timed sigprop run's weights ({len(acts)} "
          f"activation layers x 5 metrics, {len(grads)} gradient layers): max relative deviation")
    for label, fn in (("a", run_a), ("a'", run_a2)):
        t_acts, t_grads = fn()
        print(f"  torch ({label}) vs sigprop: {deviations(t_acts, t_grads, acts, grads)}")
    print(f"  sigprop vs torch float64: {deviations(acts, grads, ref_acts, ref_grads)}")
    print(f"  torch (a') vs torch float64: {deviations(t_acts, t_grads, ref_acts, ref_grads)}")

    fns = {"torch (a)": run_a, "torch (a')": run_a2, "sigprop (b)": run_b, "sigprop (c)": run_c,
           "torch (d)": run_d, "torch (a-bb)": run_a_bb, "torch (a'-bb)": run_a2_bb,
           "sigprop (b-bb)": run_b_bb}
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    order = list(fns)
    for r in range(args.repeats):
        for k in (order if r % 2 == 0 else order[::-1]):  # alternate the order
            wall, c = _timed_cpu(fns[k])
            times[k].append(wall)
            cpu[k].append(c)

    med = {k: statistics.median(v) for k, v in times.items()}

    def ratio(num, den, t=times):
        return statistics.median(n / d for n, d in zip(t[num], t[den]))

    print("\nsteady state, median wall seconds (min-max), median CPU seconds (all threads):")
    for k, v in times.items():
        print(f"  {k:<12} {med[k]:8.3f}  ({min(v):.3f}-{max(v):.3f})  cpu {statistics.median(cpu[k]):8.3f}")
    print("\nratios, median of per-repeat ratios: wall (CPU time)")
    a, a2, b, c, d, abb, a2bb, bbb = order
    for label, num, den in ((f"{a} / {b}", a, b), (f"{a2} / {b}", a2, b),
                            (f"[BB] set: {abb} / {bbb}", abb, bbb),
                            (f"[BB] set: {a2bb} / {bbb}", a2bb, bbb),
                            (f"[BB] set: metrics overhead {bbb} / {c}", bbb, c),
                            (f"metrics overhead {b} / {c}", b, c),
                            (f"metrics overhead {a2} / {d}", a2, d),
                            (f"bare forward + backward {d} / {c}", d, c),
                            (f"weight gradients in torch, {a} / {a2}", a, a2)):
        print(f"  {label}: {ratio(num, den):.2f} ({ratio(num, den, cpu):.2f})")
    print("\nsigprop compile (first call minus median steady call):")
    print(f"  (b) analyze's core:   {t_first_b - med['sigprop (b)']:.1f} s "
          f"(first call {t_first_b:.1f} s)")
    print(f"  (c) bare fwd+bwd:      {t_first_c - med['sigprop (c)']:.1f} s "
          f"(first call {t_first_c:.1f} s)")


if __name__ == "__main__":
    main()
