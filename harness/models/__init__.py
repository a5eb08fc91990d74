"""Models: a backbone registry, multi-head towers and freeze policies (imports TensorFlow).

The names below load on first use, so `import harness.models` alone stays cheap; the submodules
(backbones, heads, freeze) import Keras. harness.ledger never imports this package.
"""

_EXPORTS = {
    "build_model": "harness.models.heads",
    "count_params": "harness.models.heads",
    "apply_freeze": "harness.models.freeze",
    "policy_for": "harness.models.freeze",
    "FreezeSummary": "harness.models.freeze",
    "create_backbone": "harness.models.backbones",
    "list_backbones": "harness.models.backbones",
    "register_backbone": "harness.models.backbones",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'harness.models' has no attribute '{name}'")
