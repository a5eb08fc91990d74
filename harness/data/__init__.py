"""Datasets: hvc person attributes, CIFAR-10, a synthetic hvc-format generator, tf.data input.

Without TensorFlow: `labels` (the label catalog: heads, classes, majority rates), `table`
(HvcTable / ArrayTable), `hvc` (CSV and image validation, fingerprint), `split` (split, overlap
guard, class weights), `synth` (the embedded default set), `cifar10`, `source` (`open_dataset`,
the runner's entry point).
With TensorFlow, imported only by the code that builds datasets: `pipeline`, `augment`.
Submodules that need TensorFlow import it themselves; this package import stays light.
"""
