"""sigprop.xla_cpu: the straight-line threefry lowering changes no bit, only the program."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sigprop
from sigprop.backend import xla_cpu

engine = importlib.import_module("sigprop.core.engine")

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU lowering")

SWAP_VALIDATED = tuple(jax.__version_info__[:2]) in xla_cpu.TESTED_JAX
OPTIONS_VALIDATED = tuple(jax.__version_info__[:2]) in xla_cpu.LOOP_OPTIONS_JAX


def _skip_not_validated(what, validated, fallback):
    pytest.skip(f"{what} is not validated on jax {jax.__version__} (validated on "
                f"{sorted(validated)}): it falls back to {fallback}")


def _skip_swap():
    _skip_not_validated("the threefry swap", xla_cpu.TESTED_JAX,
                        "jax's own (rolled) CPU lowering")


def _draws(key):
    k1, k2 = jax.random.split(key)
    return (jax.random.normal(k1, (7, 33)), jax.random.uniform(k2, (5,)),
            jax.random.bits(jax.random.fold_in(key, 3), (4, 9)))


def test_swap_is_available_here():
    if not SWAP_VALIDATED:
        assert xla_cpu._threefry_swap() is None  # the context does nothing
        _skip_swap()
    assert xla_cpu._threefry_swap() is not None  # else the context silently does nothing


def test_same_bits_inside_and_outside_and_the_program_differs():
    key = jax.random.key(42)
    fn = jax.jit(_draws)
    jax.clear_caches()
    rolled_text = fn.lower(key).as_text()
    outside = [np.asarray(a) for a in fn(key)]
    jax.clear_caches()
    with xla_cpu.unrolled_threefry():
        straight_text = fn.lower(key).as_text()
        inside = [np.asarray(a) for a in fn(key)]
    jax.clear_caches()
    for a, b in zip(outside, inside):
        np.testing.assert_array_equal(a, b)
    if not SWAP_VALIDATED:  # the same bits, and the context changed nothing
        assert straight_text == rolled_text
        _skip_swap()
    # jax's CPU form loops over rounds; the straight-line form has no loop
    assert "stablehlo.while" in rolled_text
    assert "stablehlo.while" not in straight_text
    # and the table is restored: lowering again outside gives the rolled form
    assert "stablehlo.while" in fn.lower(key).as_text()


def test_reentrant_and_restored_after_an_error():
    if not SWAP_VALIDATED:  # the do-nothing context still lets the error through
        with pytest.raises(RuntimeError):
            with xla_cpu.unrolled_threefry():
                with xla_cpu.unrolled_threefry():
                    pass
                raise RuntimeError("boom")
        _skip_swap()
    table, prim, entry = xla_cpu._threefry_swap()
    before = table[prim]
    with pytest.raises(RuntimeError):
        with xla_cpu.unrolled_threefry():
            with xla_cpu.unrolled_threefry():
                assert table[prim] is entry
            assert table[prim] is entry  # still inside the outer context
            raise RuntimeError("boom")
    assert table[prim] is before


def test_analyze_numbers_do_not_depend_on_the_lowering():
    """``analyze``'s jitted core (lowered with the straight-line form) against the same function
    lowered with jax's own CPU form: equal arrays, bit for bit."""
    model, shape = sigprop.mlp(3, 16, norm="batchnorm"), (8, 16)
    keys = jax.random.key_data(engine.seed_keys(jax.random.key(0), 2))
    net = engine.linen_network(model, jax.ShapeDtypeStruct(shape, jnp.float32), None)
    args = dict(net=net, make=None, shape=shape, dtype=jnp.float32, keys=keys, x=None,
                variables=None, values=None, plan=engine.Plan(("cosine_similarity",
                                                                 "effective_rank", "grad_norm")),
                precision="highest", impl="threefry2x32")
    jax.clear_caches()
    fast = engine._core(**args)
    jax.clear_caches()
    plain = engine._core._jitted(**args)  # jax's rolled loop
    jax.clear_caches()
    for k in fast:
        np.testing.assert_array_equal(np.asarray(fast[k].value), np.asarray(plain[k].value))
    assert set(fast) == {"cosine_similarity", "effective_rank", "grad_norm", "finite",
                         "grad_finite"}
    assert jnp.all(jnp.isfinite(fast["effective_rank"].value))


def test_loop_options_exist_here_and_change_rounding_only():
    """``hessian.spectrum``'s program compiles with :func:`xla_cpu.loop_options`: they must be
    set on this jax (else the program silently falls back to the slow-prone default), and a
    loop of Hessian-vector products compiled with them agrees with jax's default compile to
    float32 rounding."""
    from sigprop import hessian
    from sigprop.core import objective as objective_lib

    options = xla_cpu.loop_options()
    if not OPTIONS_VALIDATED:
        assert options is None  # jax's defaults
        _skip_not_validated("loop_options (XLA:CPU's older emitters)", xla_cpu.LOOP_OPTIONS_JAX,
                            "jax's default compile (None)")
    assert options == {"xla_cpu_use_fusion_emitters": False}
    model, shape = sigprop.mlp(3, 16, norm="layernorm"), (8, 16)
    obj, *_ = objective_lib.objective(model, shape)
    x = jax.random.normal(jax.random.key(1), shape)
    labels = jnp.arange(8) % 10
    params, rest = obj.split(obj.init(jax.random.key(0), x))

    def loop(p, v):
        matvec = hessian.hvp_fn(obj, p, rest, x, labels)
        return jax.lax.fori_loop(0, 5, lambda i, v: matvec(v) / jnp.linalg.norm(v), v)

    v0 = jax.random.normal(jax.random.key(2), (objective_lib.count(params),))
    with_options = jax.jit(loop, compiler_options=options)(params, v0)
    default = jax.jit(loop)(params, v0)
    np.testing.assert_allclose(np.asarray(with_options), np.asarray(default), rtol=1e-5,
                               atol=1e-6 * float(jnp.max(jnp.abs(default))))
    assert float(jnp.max(jnp.abs(default))) > 0
