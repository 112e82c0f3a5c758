"""jscale: functional scaling-law research on language-model inference, in JAX.

The public API is re-exported here lazily, so ``import jscale.analysis`` (or any light
module) does not pull in the model and training code.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "jscale.config": [
        "ModelConfig",
        "TrainConfig",
        "ConfigError",
        "from_dict",
        "config_for_params",
        "default_ladder",
        "count_params",
        "flops_per_token",
    ],
    "jscale.model": ["Transformer", "init_params", "apply"],
    "jscale.data": ["Corpus", "CorpusError", "load_corpus", "train_batch", "eval_batches"],
    # `train`, `evaluate` and `roofline` are also submodule names, so they are not re-exported as
    # functions (importing the submodule would replace the attribute): use
    # `from jscale.train import train`, `from jscale.evaluate import evaluate`,
    # `from jscale.roofline import roofline`.
    "jscale.train": ["TrainResult", "TrainingDiverged", "make_optimizer"],
    "jscale.evaluate": ["compare_precisions"],
    "jscale.precision": [
        "Policy",
        "POLICIES",
        "PrecisionError",
        "get_policy",
        "convert_params",
        "param_bytes",
    ],
    "jscale.formulation": ["Formulation"],
    "jscale.schema": ["COLUMNS", "SchemaError"],
    "jscale.runtime": ["enable_compilation_cache"],
    "jscale.results": [
        "load_results",
        "load_ladder",
        "load_curves",
        "load_document_losses",
        "ResultsError",
    ],
    "jscale.sweep_config": ["load_sweep", "parse_sweep", "Sweep"],
    "jscale.sweep": ["run_sweep"],
    "jscale.analysis": [
        "fit",
        "fit_groups",
        "fit_table",
        "extrapolation_check",
        "compute_optimal",
        "select_form",
        "paired_differences",
        "fit_precision_law",
    ],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'jscale' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
