"""Models: the backbone catalog and registry, multi-head towers and freeze policies.

The names below load on first use, so `import harness.models` alone stays cheap: `catalog` is
pure Python (the ledger validates from it); `backbones`, `build` and `freeze` import Keras.
May import: harness.data (the pixel encoding of a model's first layer), harness.core.
"""

_EXPORTS = {
    "build_model": "harness.models.build",
    "count_params": "harness.models.build",
    "feature_model": "harness.models.build",
    "head_model": "harness.models.build",
    "load_model": "harness.models.build",
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
