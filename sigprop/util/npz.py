"""sigprop's files: one ``.npz`` of named arrays plus a JSON metadata string under ``__meta__``
(no pickle), written by every result type (``LayerMetrics``, ``TrainResult``, a Hessian
``Spectrum``, an experiment's data) and read back with one clear error for anything else."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping

import numpy as np

META = "__meta__"


def write(path, meta: Mapping, arrays: Mapping, *, atomic: bool = False) -> str:
    """Write ``arrays`` and ``meta`` (as JSON) to ``path`` (``.npz`` appended if missing);
    ``atomic``: through a temporary file renamed into place. Returns the path written."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    target = f"{path}.{os.getpid()}.tmp.npz" if atomic else path
    with open(target, "wb") as f:
        np.savez(f, **{META: np.array(json.dumps(dict(meta)))},
                 **{k: np.asarray(v) for k, v in arrays.items()})
    if atomic:
        os.replace(target, path)
    return path


def read(path, what: str) -> tuple[str, dict, dict]:
    """``(path, metadata, arrays)`` of a file :func:`write` wrote (``.npz`` appended to a path
    that does not exist without it); anything else is a ``ValueError`` saying the file is not a
    sigprop ``what`` file."""
    path = os.fspath(path)
    if not path.endswith(".npz") and not os.path.exists(path):
        path += ".npz"
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file; not a sigprop {what} file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if META not in data.files:
                raise ValueError("no sigprop metadata")
            meta = json.loads(str(data[META]))
            arrays = {k: data[k] for k in data.files if k != META}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a sigprop {what} file ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a sigprop {what} file")
    return path, meta, arrays
