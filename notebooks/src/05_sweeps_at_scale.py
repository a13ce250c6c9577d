# %% [markdown]
# # 05 · Sweeps at scale: resume, devices, a Dask cluster, GPUs and TPUs
#
# The claims of notebooks 02-03 are statements about *families* of networks: a metric as a
# function of the normalizer, the depth, the width, over many random initializations. Measuring
# one takes many points, and at the papers' sizes many device-hours. `sigprop.sweep` runs
# `analyze` over a grid of configurations, compiled as little as possible (points that compile
# to the same program share it), and
#
# 1. **resumes**: with `out=`, each finished point is written atomically as `<id>.npz` (the id a
#    hash of the builder, config, inputs, seeds and options), and a rerun loads the points that
#    are there and computes only the rest, so a killed sweep loses at most the point in flight;
# 2. **shards the seed axis over devices** (`mesh=`, default every device): the seeds of a point
#    run in parallel on all the accelerators of the machine, with the same numbers as on one;
# 3. **hands its units of work to an executor** (`executor=`): a Dask cluster on this machine,
#    on SLURM, or any `concurrent.futures`-like object, the workers writing into the same `out`.
#
# The metrics measured are those of notebook 01 (activation variance, cosine similarity between
# samples, gradient norms), here of ReLU MLPs with batchnorm and layernorm over depth: how fast
# the samples become alike with depth is [BB]'s "informative forward propagation".
#
# **Install.** The Dask section needs the `cluster` extra: on Colab install
# `sigprop[data,cluster]` (change `SIGPROP_SPEC` in the first cell), elsewhere
# `pip install 'sigprop[cluster]'`; without it that section says so and the rest runs.
# **Sizes.** Default: small MLPs, a couple of minutes on a free Colab CPU. `SIGPROP_QUICK=1`
# (the tests): tiny.

# %%
import os
import sys

import io
import tempfile
import time

import jax
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

import sigprop
from sigprop import devices

QUICK = os.environ.get("SIGPROP_QUICK") == "1"
SEEDS = 2 if QUICK else 8
WIDTH = 16 if QUICK else 128
BATCH = 16 if QUICK else 64
DEPTHS = [2, 4] if QUICK else [4, 8, 16, 32]
GRID = {"norm": ["batchnorm", "layernorm"], "depth": DEPTHS, "width": [WIDTH]}
INPUTS = (BATCH, WIDTH)  # N(0, 1) inputs of this shape
WORK = tempfile.mkdtemp(prefix="sigprop_sweeps_")  # everything written goes here


def show(fig):
    """Display a matplotlib figure inline (as a PNG, whatever the backend) and close it."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    display(Image(png.getvalue(), format="png"))


def npz_files(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".npz"))


print(f"sigprop {sigprop.__version__}, jax {jax.__version__};",
      "SIGPROP_QUICK=1: tiny sizes" if QUICK else "default sizes")
print(f"grid {GRID}: {len(GRID['norm']) * len(DEPTHS)} points x {SEEDS} seeds")

# %% [markdown]
# ## What this machine has
#
# `jax.devices()` lists the accelerators jax found. Everything below runs on whatever it lists;
# the last section says what changes on a GPU or TPU.

# %%
devs = jax.devices()
kinds = sorted({d.platform for d in devs})
print("jax.devices():", devs)
print(f"backend: {jax.default_backend()}; {len(devs)} device(s) of kind {', '.join(kinds)}")
if kinds == ["cpu"]:
    print("CPU only: one host device, so the sharding below has a single device to use; on a "
          "machine with several accelerators the same calls split the seeds over all of them.")
else:
    print(f"accelerators found: the seed axis is sharded over these {len(devs)} devices.")

# %% [markdown]
# ## A sweep, written to a folder
#
# `sigprop.sweep(builder, grid, inputs, seeds=, out=)`: `builder(**config)` makes the model
# (here the zoo's `sigprop.mlp(depth, width, norm=...)`); the grid is the cartesian product.
# Every point's numbers equal `sigprop.analyze(builder(**config), inputs, seeds=seeds)`.

# %%
out = os.path.join(WORK, "mlp")
t0 = time.perf_counter()
points = sigprop.sweep(sigprop.mlp, GRID, INPUTS, seeds=SEEDS, out=out, progress=False)
first = time.perf_counter() - t0
print(f"{len(points)} points in {first:.1f} s; files in out/: {npz_files(out)}")
for config, res in points:
    print(f"  {config}: final-layer cosine similarity "
          f"{float(np.mean(res.cosine_similarity[:, -1])):.3f}")

# %% [markdown]
# ## Resume: only the missing point is computed
#
# Delete one point's file (as if the sweep had been killed before finishing it) and rerun the
# same call: the points on disk are loaded, only the missing one is computed (and written
# again under the same name), and the numbers are the same. (The rerun is quick also because
# this process keeps the programs the first run compiled; a fresh process would compile the
# missing point's program once.)

# %%
files = npz_files(out)
victim = files[-1]
os.remove(os.path.join(out, victim))
print(f"deleted {victim}; {len(npz_files(out))} files left")
t0 = time.perf_counter()
again = sigprop.sweep(sigprop.mlp, GRID, INPUTS, seeds=SEEDS, out=out, progress=False)
rerun = time.perf_counter() - t0
print(f"rerun: {rerun:.1f} s (first run {first:.1f} s); files now: {len(npz_files(out))}, "
      f"{victim} back: {victim in npz_files(out)}")
same = all(np.array_equal(np.asarray(a.cosine_similarity), np.asarray(b.cosine_similarity))
           for (_, a), (_, b) in zip(points, again))
print("every point's numbers equal the first run's:", same)
t0 = time.perf_counter()
sigprop.sweep(sigprop.mlp, GRID, INPUTS, seeds=SEEDS, out=out, progress=False)
print(f"a third run, nothing missing: {time.perf_counter() - t0:.2f} s (all loaded)")

# %% [markdown]
# `sigprop.load_sweep(out)` reads a folder back, with no builder needed (e.g. on a laptop after
# a cluster run), as `[(config, LayerMetrics)]`:

# %%
loaded = sigprop.load_sweep(out)
fig, ax = plt.subplots(figsize=(6.5, 3.4))
for norm, color in (("batchnorm", "C0"), ("layernorm", "C1")):
    rows = [(c["depth"], r) for c, r in loaded if c["norm"] == norm]
    for depth, r in rows:
        v = np.asarray(r.cosine_similarity)  # [seeds, layers]
        ax.plot(np.arange(1, v.shape[1] + 1), v.mean(0), color=color,
                alpha=0.35 + 0.65 * depth / max(DEPTHS), label=f"{norm}, depth {depth}")
ax.set_xlabel("layer")
ax.set_ylabel("cosine similarity between samples")
ax.set_title(f"ReLU MLPs width {WIDTH}, N(0, 1) batch {BATCH}, mean of {SEEDS} seeds",
             fontsize=9)
ax.legend(fontsize=7, ncol=2)
show(fig)

# %% [markdown]
# ## Sharding the seeds over devices
#
# `mesh=` is a 1-D `jax.sharding.Mesh` (`sigprop.devices.mesh()`: every device, the default):
# the seed axis of each point is split over it (padded to a multiple of the device count), so
# 8 devices run 8 seeds at once. The numbers do not depend on the mesh: the same sweep on one
# device and on all of them gives equal arrays (float rounding aside).

# %%
everywhere = devices.mesh()
one = devices.mesh(jax.devices()[:1])
print("mesh over all devices:", everywhere.shape, "| over one:", one.shape)
t0 = time.perf_counter()
sharded = sigprop.sweep(sigprop.mlp, GRID, INPUTS, seeds=SEEDS, mesh=everywhere, progress=False)
t_all = time.perf_counter() - t0
t0 = time.perf_counter()
single = sigprop.sweep(sigprop.mlp, GRID, INPUTS, seeds=SEEDS, mesh=one, progress=False)
t_one = time.perf_counter() - t0
diff = max(float(np.max(np.abs(np.asarray(a.cosine_similarity) -
                               np.asarray(b.cosine_similarity))))
           for (_, a), (_, b) in zip(sharded, single))
print(f"{len(devs)} device(s): {t_all:.1f} s; 1 device: {t_one:.1f} s (both include "
      "compiling; with a single device the two meshes are the same)")
print(f"largest difference in cosine similarity between the two: {diff:.2e}")

# %% [markdown]
# ## The same sweep on a local Dask cluster
#
# `executor=` takes any object with `concurrent.futures`' `submit`. `sigprop.cluster.
# local_cluster(n)` starts `n` worker processes on this machine (one thread and one device
# each) and closes them on exit; each worker runs whole units of work (the points that share a
# program, so no two workers compile the same one) and writes its finished points into `out`.
# On a real cluster only the line making the executor changes: `cluster.connect("tcp://...")`,
# a `dask_jobqueue.SLURMCluster`'s client, a submitit executor (README, "Sweeps on a cluster").
# Starting the workers takes some seconds; worth it only for sweeps much longer than that.

# %%
try:
    import dask.distributed  # noqa: F401
    HAVE_DASK = True
except ImportError:
    HAVE_DASK = False
    print("dask is not installed: this section is skipped. Install the cluster extra: "
          "pip install 'sigprop[cluster]' (on Colab: sigprop[data,cluster] in SIGPROP_SPEC).")

if HAVE_DASK:
    from sigprop import cluster

    dask_out = os.path.join(WORK, "mlp_dask")
    t0 = time.perf_counter()
    with cluster.local_cluster(2) as client:
        print(f"cluster up in {time.perf_counter() - t0:.1f} s:",
              len(client.scheduler_info()["workers"]), "workers")
        t1 = time.perf_counter()
        on_dask = sigprop.sweep(sigprop.mlp, GRID, INPUTS, seeds=SEEDS, out=dask_out,
                                executor=client, progress=False)
        print(f"{len(on_dask)} points on the cluster in {time.perf_counter() - t1:.1f} s; "
              f"{len(npz_files(dask_out))} files in its out/")
    diff = max(float(np.max(np.abs(np.asarray(a.cosine_similarity) -
                                   np.asarray(b.cosine_similarity))))
               for (_, a), (_, b) in zip(on_dask, single))
    print(f"cluster closed; largest difference from the in-process sweep on one device: "
          f"{diff:.2e} (each worker has one device)")

# %% [markdown]
# ## On a GPU or TPU
#
# Nothing in the calls above changes; what changes is underneath:
#
# - **devices**: `jax.devices()` lists the GPUs or TPU cores, and the seed axis of every point is
#   sharded over all of them (8 TPU cores run 8 seeds at once); choose `seeds` as a multiple of
#   the device count, or the padding computes seeds that are thrown away;
# - **precision**: `sweep` and `analyze` default to `precision="highest"`: full float32 matmuls
#   (GPUs' TF32 and TPUs' bfloat16 passes otherwise change the metrics in the third digit);
#   `precision="default"` is faster and less exact;
# - **sizes**: the papers' sizes (`FULL = True` in notebooks 02-03) become minutes, not hours;
# - **a cluster of GPU machines**: one Dask worker per GPU (`dask_jobqueue` with `--gres=gpu:1`),
#   `out` a folder every worker sees; the numbers equal a single machine's with the same kind and
#   number of devices per worker.
#
# What this run found:

# %%
if kinds == ["cpu"]:
    print(f"CPU only ({len(devs)} host device(s), {os.cpu_count()} cores): the sweeps above "
          "ran on the CPU. On a GPU/TPU runtime the same cells shard the seeds over the "
          "accelerators, with precision='highest' keeping float32 matmuls.")
else:
    print(f"{len(devs)} {', '.join(kinds)} device(s): the seeds above were sharded over them, "
          "with precision='highest' (full float32 matmuls).")
