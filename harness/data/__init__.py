"""Datasets: hvc person attributes, CIFAR-10, a synthetic hvc-format generator, tf.data input.

Submodules that need TensorFlow import it themselves; this package import stays light.
"""
