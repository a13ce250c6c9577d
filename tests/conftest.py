"""Test configuration: fast XLA compiles, strict JAX promotion, keys from a fixture."""

import os

# XLA:CPU's default -O2 backend spends ~2x longer compiling for ~15% faster kernels; tests are
# compile-bound. Set before JAX initializes its backend.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    """``sigprop.cli.main`` run in-process would turn on sigprop's persistent XLA cache in
    ``~/.cache`` for the rest of the test session: tests would write there, and a second run
    would time differently from a fresh machine's."""
    from sigprop.backend import cpu

    monkeypatch.setattr(cpu, "fast_start", lambda: None)
