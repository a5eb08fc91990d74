"""Datasets: hvc person attributes, CIFAR-10, a synthetic hvc-format generator, tf.data input.

Without TensorFlow: `table`
(HvcTable / ArrayTable), `hvc` (CSV and image validation, fingerprint), `split` (split, overlap
guard, class weights), `synth` (the embedded default set), `cifar10`, `source` (`open_dataset`,
the runner's entry point), `pixels` (how pixels reach a backbone), `overlap`. The label catalog is
harness.core.labels.
With TensorFlow, imported only by the code that builds datasets: `pipeline`, `augment`.
Submodules that need TensorFlow import it themselves; this package import stays light.
May import: harness.core only (the bottom layer but one).
"""
