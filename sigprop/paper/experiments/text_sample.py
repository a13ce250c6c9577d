"""A frozen text sample: the 16 windows of 128 bytes of sigprop's README.md (as of 2026-12-04,
evenly spaced over the file) that claim 13's byte-level language model reads
(:mod:`sigprop.paper.experiments.transformers`). Frozen so that the claim's inputs do not change
when the README does, and exist in an installed package (no README there): the committed
``figures/data/xiong_gradients.npz`` holds these bytes as its ``tokens``."""

WINDOWS = (
    b'# sigprop\n\n**sigprop** measures how signals prop'
    b'agate through randomly initialized deep networks'
    b', and how\neach normalization lay',
    b'uilds\n  one as a `flax.linen` module, its equati'
    b'on in its docstring.\n- Models: `mlp(depth, width'
    b')`, `cnn("cfg_10" | "cfg_20" | "',
    b'm_device_count`), the eigenvalue step\n  makes on'
    b"e LAPACK call per matrix (jaxlib 0.10's batched "
    b'CPU kernels deadlocked two devic',
    b"0', 'LayerNorm_1'): every normalizer's output\nre"
    b"s.grad_layer_names       # ('Dense_0', 'Dense_1'"
    b'): every dense/conv but the clas',
    b'e 5,000 real digits (sigprop[data])\nx, y = data.'
    b'flatten(images[:256]), labels[:256]\nmodel = sigp'
    b'rop.mlp(4, 64, norm="layernorm",',
    b'\n  similar-batch correlation, the gradient cosin'
    b"es between minibatches (Sankararaman et al.'s\n  "
    b'gradient confusion is `-gradient',
    b'permutation p-value) report their statistic, a o'
    b'ne-sided p-value and a 95% bootstrap\n  interval '
    b'(`sigprop.util.stats`): `pass` n',
    b'es/<name>.png` and `.pdf` and caches the\nmeasure'
    b'd arrays in `figures/data/<name>.npz` (re-plotti'
    b'ng is instant). `--quick` writes',
    b'thout and with skips, similar-batch correlation '
    b'and gradient norm, the batchnorm rate pi/(pi - 1'
    b') dashed. Claim 7 passes on 24 b',
    b' train cross-entropy through early training, eac'
    b'h normalizer at its tuned rate; batchnorm and bm'
    b'lv (batch-mean subtraction) keep',
    b'://github.com/sigprop/sigprop` (a fork changes t'
    b'hat one\n`SIGPROP_SPEC` line). Sources: `notebook'
    b's/src/NN_name.py` (percent forma',
    b'prop.train(...)`, `sigprop.coord_check(...)`, `s'
    b'igprop.validate(...)` are callable modules). `im'
    b'port sigprop`\n  loads `paper/`, ',
    b't for bit, when the\nworkers have the same kind a'
    b'nd number of devices (the local cluster gives ea'
    b'ch worker one). A\nworker that di',
    b'rent.futures.ProcessPoolExecutor(2, mp_context=m'
    b'ultiprocessing.get_context("spawn"))\n\npoints = s'
    b'igprop.sweep(sigprop.mlp, grid, ',
    b'the processes already share the work.\n\n## Perfor'
    b'mance\n\n- One jitted program per (model, input sh'
    b'ape, options): seeds ride a `vma',
    b'cks above allow; `benchmarks/vs_torch.py` compar'
    b'es with a PyTorch port\n  of the probes. Latest n'
    b'umbers: `benchmarks/README.md`.\n',
)

__all__ = ["WINDOWS"]
