"""The accelerator benchmark (issue 23): every figure of one device, measured in one run.

On the device jax runs on (a GPU, a TPU, or the CPU), in one process:

- **vs torch**: ``analyze`` vs the PyTorch probes (``torch_probes.py``: [BB]'s hooks and
  ``.item()``) on the same device, weights and batch, on equal metric sets (the five activation
  metrics and ``grad_norm``), ResNet-56 + BatchNorm: torch per network / ``analyze(seeds=1)``,
  and torch per network / ``analyze(seeds=32)`` per seed. Skipped, with the reason printed,
  without torch (or without a CUDA torch when jax runs on a GPU);
- **fixed cost**: ``analyze(seeds=1)`` (the whole call: argument checks, the jitted program,
  the results on the host) / a bare jitted forward + backward of the same net and weights
  (the gradient of the loss w.r.t. the input, no taps);
- **seeds vmap**: 64 calls of ``analyze(mlp(50, 64), seeds=1)`` / one call with ``seeds=64``;
- **depth throughput**: ``analyze(mlp(1000, 1024, batchnorm))``, batch 256: its dense matmul
  FLOP rate (forward + input gradient: 2 matmuls a layer) / the rate of one isolated float32
  (``highest``) matmul of that shape on the same device;
- **Lanczos**: one Lanczos step (the run of order 90 over 90; in the JSON's details also the
  difference of orders 90 and 30 over 60) of an mlp 10 x 256 LayerNorm's Hessian / one
  forward + backward (``sigprop.hessian``'s building blocks);
- **training record overhead**: ``sigprop.train`` recording every 10 steps / not recording;
- **first calls** (compile + one run): ``analyze`` of ResNet-56 (the first call of the run)
  and ``hessian.spectrum(order=90, probes=8)`` of the Lanczos net, with their steady times.

Times are minima over ``--repeats`` interleaved rounds after a warm-up call. ``--quick`` shrinks
every model (a one-block ResNet for ResNet-56, depth 4 for 1000, 8 seeds for 64, ...) so that
the run takes well under a minute on a CPU: the test suite runs it (``tests/test_gpu_benchmark.py``);
its figures check the script, not the device.

Writes the figures as JSON (``--out``, default ``benchmarks/results/gpu-<backend>.json``) and
prints a ``benchmarks/README.md`` row.

    python benchmarks/gpu.py [--quick] [--out PATH] [--repeats 3]

``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is not needed here (one process); run it alone on the
device.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import pathlib
import platform
import sys
import time

_HERE = pathlib.Path(__file__).resolve().parent

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import sigprop  # noqa: E402
from sigprop.core import objective as objective_lib  # noqa: E402

METRICS = ("activation_variance", "channel_squared_mean", "cosine_similarity", "stable_rank",
           "effective_rank", "grad_norm")  # torch_probes.ACT_METRICS + grad_norm

# (full, quick) sizes
SIZES = {
    "full": dict(resnet=(9, (32, 64, 128)), image=32, batch=64, many_seeds=32,
                 vmap_depth=50, vmap_width=64, vmap_seeds=64, vmap_batch=64, vmap_norm="none",
                 deep=(1000, 1024, 256), lanczos=(10, 256, 128), orders=(30, 90),
                 spectrum=(90, 8), train_steps=200, train=(4, 256, 128)),
    "quick": dict(resnet=(1, (8,)), image=8, batch=8, many_seeds=2,
                  vmap_depth=4, vmap_width=32, vmap_seeds=8, vmap_batch=8,
                  vmap_norm="batchnorm",  # the deep net's program: one compile less
                  deep=(4, 32, 8), lanczos=(2, 32, 16), orders=(None, 8),
                  spectrum=(4, 2), train_steps=10, train=(2, 32, 16)),
}


def _best(fn, repeats: int) -> float:
    """Minimum wall seconds of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    jax.block_until_ready(fn())
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def _first(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def _cross_entropy(logits, key):
    labels = jax.random.randint(key, logits.shape[:1], 0, logits.shape[-1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def _bare_forward_backward(model, variables, x, key):
    """``() -> d loss / d x``: one jitted forward + backward, no taps (``analyze``'s loss)."""
    grad = jax.jit(jax.grad(lambda x, v, k: _cross_entropy(model.apply(v, x), k)))
    params = {"params": variables["params"]}

    def run():
        with jax.default_matmul_precision("highest"):
            return grad(x, params, key)

    return run


def resnet_figures(s, repeats, out, details):
    blocks, widths = s["resnet"]
    model = sigprop.models.resnet(blocks, widths, norm="batchnorm")
    x = jax.random.normal(jax.random.key(1234), (s["batch"], s["image"], s["image"], 3))

    def one():
        return sigprop.analyze(model, x, seeds=1, metrics=METRICS)

    out["first_call_analyze_resnet_s"] = _first(one)  # the first call of the run: compile
    t1 = _best(one, repeats)
    out["analyze_seed1_s"] = t1
    out["compile_analyze_resnet_s"] = max(out["first_call_analyze_resnet_s"] - t1, 1e-6)
    n = s["many_seeds"]
    tn = _best(lambda: sigprop.analyze(model, x, seeds=n, metrics=METRICS), repeats)
    out[f"analyze_seed{n}_per_seed_s"] = tn / n
    variables = jax.jit(model.init)(jax.random.key(0), x)
    bare = _bare_forward_backward(model, variables, x, jax.random.key(1))
    out["bare_fwd_bwd_s"] = _best(bare, repeats)
    out["analyze_over_bare"] = t1 / out["bare_fwd_bwd_s"]
    _torch_figures(model, (blocks, widths), variables, x, t1, tn / n, n, repeats, out, details)


def _torch_figures(model, arch, variables, x, t1, per_seed, n, repeats, out, details):
    """torch probes per network vs analyze, same device, weights, batch and metric set."""
    try:
        import torch

        sys.path.insert(0, str(_HERE))
        import torch_probes as tp
    except ImportError as e:
        details["torch"] = f"skipped: torch is not installed ({e})"
        print(f"vs torch: {details['torch']}")
        return
    on_gpu = jax.default_backend() == "gpu"
    if on_gpu and not torch.cuda.is_available():
        details["torch"] = "skipped: jax runs on a GPU but this torch has no CUDA"
        print(f"vs torch: {details['torch']}")
        return
    device = "cuda" if on_gpu else "cpu"
    net = tp.load_sigprop_params(tp.ResNet(*arch, model.n_classes),
                                 variables["params"]).to(device)
    probes = tp.Probes(net)
    xt = tp.nhwc_to_nchw(x).to(device)
    labels = torch.randint(0, model.n_classes, (x.shape[0],), device=device)

    def run():
        tp.analyze(net, probes, xt, labels, True)  # .item() syncs every value
        return None

    t_torch = _best(run, repeats)
    out["torch_probes_s"] = t_torch
    out["torch_over_analyze_seed1"] = t_torch / t1
    out[f"torch_over_analyze_seed{n}_per_seed"] = t_torch / per_seed
    details["torch"] = f"torch {torch.__version__} on {device}"


def seeds_vmap_figure(s, repeats, out):
    model = sigprop.mlp(s["vmap_depth"], s["vmap_width"], norm=s["vmap_norm"])
    shape, n = (s["vmap_batch"], s["vmap_width"]), s["vmap_seeds"]

    def many_calls():
        return [sigprop.analyze(model, shape, seeds=1, key=i) for i in range(n)]

    t_calls = _best(many_calls, max(1, repeats // 2))
    t_one = _best(lambda: sigprop.analyze(model, shape, seeds=n), repeats)
    out["seeds_vmap_ratio"] = t_calls / t_one


def depth_figure(s, repeats, out):
    depth, width, batch = s["deep"]
    model = sigprop.mlp(depth, width, norm="batchnorm")
    t_run = _best(lambda: sigprop.analyze(model, (batch, width)), repeats)
    a, w = jnp.ones((batch, width)), jnp.ones((width, width))
    dot = jax.jit(lambda a, w: jnp.dot(a, w, precision="highest"))
    t_dot = _best(lambda: [dot(a, w) for _ in range(20)][-1], repeats) / 20
    flops = 2 * batch * width * width
    out["deep_analyze_s"] = t_run
    out["matmul_gflops"] = flops / t_dot / 1e9
    out["deep_matmul_fraction"] = (depth * 2 * flops / t_run) / (flops / t_dot)


def lanczos_figures(s, repeats, out, details):
    depth, width, batch = s["lanczos"]
    model = sigprop.mlp(depth, width, norm="layernorm", n_classes=10)
    shape = (batch, width)
    obj, *_ = objective_lib.objective(model, shape)
    x = jax.random.normal(jax.random.key(1), shape)
    labels = jnp.arange(batch) % 10
    params, rest = obj.split(obj.init(jax.random.key(0), x))
    grad = jax.jit(lambda p: jax.grad(lambda q: obj.loss(q, rest, x, labels)[0])(p))

    def run(order):
        go = jax.jit(lambda p, v0: sigprop.hessian.lanczos(
            sigprop.hessian.hvp_fn(obj, p, rest, x, labels), v0, order))
        v0 = jax.random.normal(jax.random.key(2), (objective_lib.count(params),))
        return lambda: go(params, v0)

    lo, hi = s["orders"]  # quick: no lo (one program less)
    t_grad = _best(lambda: grad(params), repeats)
    t_hi = _best(run(hi), repeats)
    out["lanczos_step_over_fwd_bwd"] = t_hi / hi / t_grad
    if lo is not None:  # the step as a difference of two orders (noisier; not in --quick)
        t_lo = _best(run(lo), repeats)
        details["lanczos_step_difference_over_fwd_bwd"] = (t_hi - t_lo) / (hi - lo) / t_grad
    order, probes = s["spectrum"]

    def spectrum():
        return sigprop.hessian.spectrum(model, shape, order=order, probes=probes).density
    out["first_call_hessian_spectrum_s"] = _first(spectrum)
    out["hessian_spectrum_s"] = _best(spectrum, 1)


def train_figure(s, repeats, out):
    depth, width, batch = s["train"]
    images = sigprop.data.gaussian((batch * 8, width), key=3)
    labels = np.arange(batch * 8) % 10
    model = sigprop.mlp(depth, width, norm="batchnorm", n_classes=10)
    common = dict(steps=s["train_steps"], batch_size=batch, learning_rate=0.05, record_every=10)

    def record():
        return jax.tree_util.tree_leaves(
            sigprop.train(model, (images, labels), **common).variables)

    def bare():  # as benchmarks/train.py: the same run without its records
        return jax.tree_util.tree_leaves(
            sigprop.train(model, (images, labels), _record=False, **common).variables)

    out["train_record_over_bare"] = _best(record, repeats) / _best(bare, repeats)


def _deviation(a, b) -> float:
    """max |a - b| / max(|b|, 1e-6) over finite entries of ``b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    keep = np.isfinite(b)
    return float(np.max(np.abs(a - b)[keep] / np.maximum(np.abs(b[keep]), 1e-6), initial=0.0))


def precision_table(quick: bool) -> dict:
    """``{model: {mode: {metric: max relative deviation from precision="highest"}}}`` of
    ``precision="default"`` on ResNet-56 (BatchNorm, batch 64, 2 seeds) and a 6 x 128 Pre-LN
    transformer (4 heads, N(0, 1) tokens 8 x 64 x 128). On an accelerator the mode is the
    device's own ``default``; on CPU, where XLA ignores the flag, TF32 and bfloat16 operands
    emulated (:mod:`sigprop.backend.precision`), and the CPU's own ``default`` as a check (0)."""
    from sigprop.backend import precision as emulation
    from sigprop.metrics import DEFAULT_METRICS, TRANSFORMER_METRICS

    if quick:
        cases = {"resnet": (sigprop.models.resnet(1, (8, 16)), (8, 8, 8, 3), DEFAULT_METRICS, 1),
                 "transformer": (sigprop.transformer(2, 16, 2), (4, 8, 16),
                                 TRANSFORMER_METRICS, 1)}
    else:
        cases = {"resnet56": (sigprop.resnet56(norm="batchnorm"), (64, 32, 32, 3),
                              DEFAULT_METRICS, 2),
                 "transformer 6x128": (sigprop.transformer(6, 128, 4), (8, 64, 128),
                                       TRANSFORMER_METRICS, 1)}
    on_cpu = jax.default_backend() == "cpu"
    modes = {"default": None}
    if on_cpu and emulation.available():
        modes.update({"tf32 (emulated)": "tf32", "bf16 (emulated)": "bf16"})
    table = {}
    for name, (model, shape, metrics, seeds) in cases.items():
        x = np.asarray(jax.random.normal(jax.random.key(7), shape), np.float32)
        want = sigprop.analyze(model, x, seeds=seeds, metrics=metrics, precision="highest")
        table[name] = {}
        for mode, fmt in modes.items():
            with emulation.emulated(fmt) if fmt else contextlib.nullcontext():
                got = sigprop.analyze(model, x, seeds=seeds, metrics=metrics,
                                      precision="default")
            table[name][mode] = {m: _deviation(got[m], want[m]) for m in metrics}
            print(f"precision {name} {mode}: " + ", ".join(
                f"{m} {v:.1e}" for m, v in table[name][mode].items()))
    return table


def readme_row(result: dict) -> str:
    f, d = result["figures"], result["details"]
    n = result["sizes"]["many_seeds"]
    torch_part = (f"torch probes / analyze: {f['torch_over_analyze_seed1']:.2f}x at seeds=1, "
                  f"{f[f'torch_over_analyze_seed{n}_per_seed']:.1f}x per seed at seeds={n}; "
                  if "torch_probes_s" in f else f"torch: {d['torch']}; ")
    return (f"| {result['date']} | {result['machine']} | {result['device']} (jax "
            f"{result['jax']}) | `gpu.py{' --quick' if result['quick'] else ''}`: "
            f"{torch_part}analyze(seeds=1) {f['analyze_seed1_s'] * 1e3:.1f} ms = "
            f"**{f['analyze_over_bare']:.2f}x** a bare jitted fwd + bwd; seeds vmap "
            f"**{f['seeds_vmap_ratio']:.2f}x**; deep mlp {f['deep_matmul_fraction']:.2f} of the "
            f"matmul rate ({f['matmul_gflops']:.1f} GFLOP/s); Lanczos step / fwd + bwd "
            f"**{f['lanczos_step_over_fwd_bwd']:.2f}**; train record / bare "
            f"**{f['train_record_over_bare']:.2f}**; first calls: analyze "
            f"{f['first_call_analyze_resnet_s']:.1f} s, hessian.spectrum "
            f"{f['first_call_hessian_spectrum_s']:.1f} s |")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small models: a CPU smoke run")
    p.add_argument("--repeats", type=int, default=None, help="timed calls (default 3; quick 1)")
    p.add_argument("--precision", action="store_true",
                   help="also each metric's deviation of precision='default' from 'highest' "
                        "(ResNet-56, a transformer; on CPU TF32 / bf16 emulated)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/"
                                               "gpu-<backend>[-quick].json)")
    args = p.parse_args(argv)
    size = "quick" if args.quick else "full"
    s = SIZES[size]
    repeats = args.repeats or (1 if args.quick else 3)
    backend = jax.default_backend()
    device = jax.devices()[0]
    start = time.perf_counter()
    figures, details = {}, {"section_seconds": {}}
    sections = (("resnet", lambda: resnet_figures(s, repeats, figures, details)),  # first: its
                ("seeds_vmap", lambda: seeds_vmap_figure(s, repeats, figures)),  # first call
                ("depth", lambda: depth_figure(s, repeats, figures)),  # is a true first call
                ("lanczos", lambda: lanczos_figures(s, repeats, figures, details)),
                ("train", lambda: train_figure(s, repeats, figures)))
    for name, run in sections:
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        details["section_seconds"][name] = dict(wall=time.perf_counter() - wall,
                                                cpu=time.process_time() - cpu)
    if args.precision:
        details["precision"] = precision_table(args.quick)
    result = dict(
        date=datetime.date.today().isoformat(), quick=args.quick, sizes=s,
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        device=f"{backend}: {getattr(device, 'device_kind', str(device))}",
        jax=jax.__version__, seconds=time.perf_counter() - start,
        figures={k: float(v) for k, v in figures.items()}, details=details)
    path = pathlib.Path(args.out or _HERE / "results" /
                        f"gpu-{backend}{'-quick' if args.quick else ''}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    for k, v in result["figures"].items():
        print(f"  {k:<40} {v:.4g}")
    print(f"{result['seconds']:.1f} s; JSON: {path}\n{readme_row(result)}")
    return result


if __name__ == "__main__":
    main()
