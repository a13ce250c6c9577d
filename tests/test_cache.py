"""``sigprop.enable_cache``: the opt-in persistent compilation cache writes compiled programs to
the directory it is given (a second call moves it), and importing sigprop turns nothing on."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import sigprop
from sigprop.backend import compile_cache


@pytest.fixture
def restore_cache():
    saved = (jax.config.jax_compilation_cache_dir,
             jax.config.jax_persistent_cache_min_compile_time_secs)
    yield
    compile_cache.disable_cache()
    if saved[0] is not None:
        compile_cache.enable_cache(saved[0], min_compile_time_secs=saved[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])


def test_import_sets_no_cache():
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    code = ("import jax, sigprop; print(jax.config.jax_compilation_cache_dir, "
            "jax.config.jax_persistent_cache_min_compile_time_secs)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "None", out
    assert sigprop.enable_cache is compile_cache.enable_cache
    assert "enable_cache" in sigprop.__all__


def test_enable_cache_creates_and_fills_the_directory(tmp_path, restore_cache):
    where = tmp_path / "nested" / "xla"
    got = sigprop.enable_cache(where, min_compile_time_secs=0)
    assert got == str(where) and where.is_dir()
    assert jax.config.jax_compilation_cache_dir == str(where)

    def program(x):  # a program no other test compiles
        return jnp.cumsum(jnp.sin(x) * 17.25) + 3.5

    jax.block_until_ready(jax.jit(program)(jnp.arange(7.0)))
    assert any(where.iterdir()), "nothing was written to the cache"
    # a second directory takes over (JAX opened the first one)
    other = sigprop.enable_cache(tmp_path / "other", min_compile_time_secs=0)
    jax.block_until_ready(jax.jit(lambda x: jnp.cos(x) * 3.75 - 1.0)(jnp.arange(5.0)))
    assert any(os.scandir(other))


def test_enable_cache_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="min_compile_time_secs"):
        sigprop.enable_cache(tmp_path, min_compile_time_secs=-1)
    with pytest.raises(ValueError, match="min_compile_time_secs"):
        sigprop.enable_cache(tmp_path, min_compile_time_secs="1")
