"""Checkpoints: one ``.npz`` per pytree (a trained model's params, or a training state:
params and optimizer state), written atomically.

Each leaf is stored under its tree path (``jax.tree_util.keystr``), with a JSON ``meta`` entry
(step, training time, tokens, loss curve: whatever the caller passes).  ``save`` writes a
temporary file, ``fsync``s and renames it, so a kill at any moment leaves the old checkpoint,
the new one, or none, never a torn file.  ``load`` rebuilds the pytree from a template (a
``ModelConfig``: ``model.init_params``'s structure, or any pytree of ``jax.ShapeDtypeStruct``
from ``jax.eval_shape``: nothing is initialised) and checks every path, shape and dtype.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import jax
import numpy as np

from jscale import model
from jscale.config import ModelConfig


class CheckpointError(ValueError):
    """A checkpoint that is unreadable (truncated, garbled, empty) or does not match the model
    it is loaded for; the message names the file."""


def save(path: str | os.PathLike, params, meta: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    arrays = {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed writer
        if stale != tmp:
            stale.unlink(missing_ok=True)
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load(path: str | os.PathLike, template):
    """(tree, meta) from ``path``, checked against ``template``: a ``ModelConfig`` (its params)
    or a pytree of arrays / ``jax.ShapeDtypeStruct``."""
    path = Path(path)
    if isinstance(template, ModelConfig):
        cfg = template
        template = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    try:
        with np.load(path) as z:
            stored = {k: z[k] for k in z.files}
        meta = json.loads(stored.pop("__meta__").tobytes().decode()) if "__meta__" in stored else {}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # truncated, garbled, empty
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path}: unreadable checkpoint ({why}); delete it and rerun to retrain that model "
            "(or rerun the sweep with --force --retrain)"
        ) from None
    leaves = []
    for k, spec in paths:
        name = jax.tree_util.keystr(k)
        a = stored.pop(name, None)
        if a is None or a.shape != spec.shape or a.dtype != spec.dtype:
            got = "missing" if a is None else f"{a.dtype}{list(a.shape)}"
            raise CheckpointError(
                f"{path}: leaf {name} is {got}, the template needs {spec.dtype}{list(spec.shape)}"
            )
        leaves.append(jax.numpy.asarray(a))
    if stored:
        raise CheckpointError(
            f"{path}: leaves the template does not have: {', '.join(sorted(stored))}"
        )
    return jax.tree_util.tree_unflatten(treedef, leaves), meta
