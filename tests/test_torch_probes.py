"""sigprop vs an independent PyTorch implementation of its probes (benchmarks/torch_probes.py).

Same weights, input and labels in both frameworks; every activation metric and gradient norm of
every layer must agree to float32 accuracy. torch is an optional extra (``pip install .[bench]``),
so this module is skipped without it.
"""

import importlib
import importlib.util
import pathlib

import jax
import numpy as np
import optax
import pytest

import sigprop
from sigprop.nn.resnet import resnet

torch = pytest.importorskip("torch")

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "torch_probes.py"
_spec = importlib.util.spec_from_file_location("torch_probes", _PATH)
tp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tp)

RTOL = 1e-4  # float32; measured max deviation 2e-6 (gradient norms), 5e-7 (activation metrics)


BLOCKS, WIDTHS, BATCH = 2, (8, 16), 16  # stage 1 an nn.scan stack; conv and identity shortcuts


@pytest.fixture(scope="module")
def sigprop_run():
    """sigprop's metrics of a small ResNet, with the variables, input and labels it used."""
    model = resnet(BLOCKS, WIDTHS, norm="batchnorm")
    k_x, k_init, k_label = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k_x, (BATCH, 16, 16, 3))
    variables = jax.jit(model.init)(k_init, x)
    labels = jax.random.randint(k_label, (BATCH,), 0, model.n_classes)

    def loss(logits, key):  # fixed labels, the same in torch
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    res = sigprop.analyze(model, x, variables={"params": variables["params"]}, loss=loss)
    acts = np.stack([res[m][0] for m in tp.ACT_METRICS] + [res.finite[0]], -1)
    grads = np.stack([res.grad_norm[0], res.grad_finite[0]], -1)
    return model, res, variables, x, labels, acts, grads


@pytest.mark.parametrize("param_grads", [True, False])
def test_torch_probes_match_sigprop(sigprop_run, param_grads):
    model, res, variables, x, labels, acts, grads = sigprop_run
    assert acts[:, -1].all() and grads[:, 1].all()  # finite flags

    net = tp.load_sigprop_params(tp.ResNet(BLOCKS, WIDTHS, model.n_classes), variables["params"])
    probes = tp.Probes(net)
    assert probes.act_names == list(res.layer_names)
    assert probes.grad_names == list(res.grad_layer_names)
    t_acts, t_grads = tp.analyze(net, probes, tp.nhwc_to_nchw(x),
                                 torch.from_numpy(np.array(labels, dtype=np.int64)), param_grads)

    for i, name in enumerate(tp.ACT_METRICS):
        np.testing.assert_allclose(t_acts[:, i], acts[:, i], rtol=RTOL, err_msg=name)
    np.testing.assert_allclose(t_grads, grads[:, 0], rtol=RTOL, err_msg="grad_norm")
