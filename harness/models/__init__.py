"""Models: a backbone registry, multi-head towers and freeze policies (imports TensorFlow)."""
