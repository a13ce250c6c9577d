"""``precision="default"``: its error measured, CPU-emulated (:mod:`sigprop.backend.precision`).

XLA:CPU ignores the flag (``default`` gives the bits of ``highest``); an accelerator's default
rounds matmul and convolution operands to TF32 (GPU) or bfloat16 (TPU). The emulation rounds the
same operands on CPU: checked against a hand-rounded matmul and convolution, then every default
metric of a small zoo model (more with ``-m slow``) stays within ``BOUND`` of ``highest`` (the README's precision table gives the
deviations on ResNet-56 and a 6 x 128 transformer, measured with ``benchmarks/gpu.py
--precision``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sigprop
from sigprop.backend import precision as emulation
from sigprop.metrics import DEFAULT_METRICS, TRANSFORMER_METRICS

pytestmark = [
    pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU emulation"),
    pytest.mark.skipif(not emulation.available(), reason=(
        f"precision emulation is not validated on jax {jax.__version__} (validated on "
        f"{sorted(emulation.TESTED_JAX)})")),
]

# max relative deviation from "highest" (|d| / max(|x|, 1e-6)) of any metric, any layer
BOUND = {"tf32": 5e-3, "bf16": 5e-2}


def test_round_mantissa():
    x = jax.random.normal(jax.random.key(0), (1000,)) * 10.0 ** jnp.linspace(-8, 8, 1000)
    bf16 = np.asarray(x.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_array_equal(np.asarray(emulation.round_mantissa(x, "bf16")), bf16)
    tf32 = np.asarray(emulation.round_mantissa(x, "tf32"))
    assert np.all(np.abs(tf32 - x) <= 2.0 ** -11 * np.abs(x))  # half a unit of 10 bits
    bits = tf32.view(np.uint32)
    assert np.all(bits & 0x1FFF == 0)
    special = jnp.array([jnp.inf, -jnp.inf, 0.0, 1.0 + 2**-11, 1.0 + 3 * 2**-11])
    np.testing.assert_array_equal(np.asarray(emulation.round_mantissa(special, "tf32")),
                                  [np.inf, -np.inf, 0.0, 1.0, 1.0 + 2**-9])  # to even


def test_emulated_matmul_rounds_default_operands_only():
    a = jax.random.normal(jax.random.key(1), (32, 48))
    b = jax.random.normal(jax.random.key(2), (48, 16))

    @jax.jit
    def f(a, b):
        return a @ b, jnp.dot(a, b, precision="highest")

    with jax.default_matmul_precision("default"):
        plain, _ = f(a, b)
        with emulation.emulated("tf32"):
            rounded, highest = f(a, b)
        after, _ = f(a, b)
    want = np.asarray(emulation.round_mantissa(a, "tf32"), np.float64) @ np.asarray(
        emulation.round_mantissa(b, "tf32"), np.float64)
    np.testing.assert_allclose(np.asarray(rounded), want, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(np.asarray(rounded) - np.asarray(plain))) > 1e-4  # it did round
    np.testing.assert_array_equal(np.asarray(highest), np.asarray(plain))  # HIGHEST untouched
    np.testing.assert_array_equal(np.asarray(after), np.asarray(plain))  # nothing leaks


def test_emulated_convolution_rounds_its_operands():
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 3))
    k = jax.random.normal(jax.random.key(4), (3, 3, 3, 4))

    def conv(x, k, precision=None):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", precision=precision,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    with emulation.emulated("bf16"):
        got = jax.jit(conv)(x, k)
    want = conv(emulation.round_mantissa(x, "bf16"), emulation.round_mantissa(k, "bf16"),
                precision="highest")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(np.asarray(got) - np.asarray(conv(x, k)))) > 1e-3


CASES = {
    "mlp-layernorm": lambda: (sigprop.mlp(4, 32, norm="layernorm"), (16, 32),
                              tuple(m for m in DEFAULT_METRICS if m != "residual_variance")),
}
SLOW_CASES = {  # convolutions and attention (-m slow)
    "resnet-batchnorm": lambda: (sigprop.models.resnet(1, (8, 16), norm="batchnorm"),
                                 (8, 8, 8, 3), DEFAULT_METRICS),
    "transformer": lambda: (sigprop.transformer(2, 16, 2), (4, 8, 16), TRANSFORMER_METRICS),
}


def _deviation(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-6)))


def _check(model, shape, metrics):
    x = np.asarray(jax.random.normal(jax.random.key(7), shape), np.float32)
    want = sigprop.analyze(model, x, metrics=metrics, precision="highest")
    cpu_default = sigprop.analyze(model, x, metrics=metrics, precision="default")
    for m in metrics:  # XLA:CPU ignores the flag
        np.testing.assert_array_equal(np.asarray(cpu_default[m]), np.asarray(want[m]), err_msg=m)
    for fmt, bound in BOUND.items():
        with emulation.emulated(fmt):
            got = sigprop.analyze(model, x, metrics=metrics, precision="default")
        dev = {m: _deviation(got[m], want[m]) for m in metrics}
        assert max(dev.values()) <= bound, (fmt, dev)
        assert max(dev.values()) > 0, (fmt, "the emulation changed nothing")


@pytest.mark.parametrize("case", list(CASES))
def test_default_precision_error_is_bounded(case):
    _check(*CASES[case]())


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SLOW_CASES))
def test_default_precision_error_is_bounded_conv_attention(case):
    _check(*SLOW_CASES[case]())
