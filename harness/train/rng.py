"""The random state of training, so that a killed and resumed CPU run follows the uninterrupted
run's trajectory exactly.

What is random in a pass, and how each is made repeatable:
- batch order and augmentation: stateless ops keyed on (seed, epoch) and (seed, batch number)
  in harness.data.pipeline; nothing to keep.
- weight initialization and the seeds Keras layers draw when they are built (each Dropout owns a
  SeedGenerator seeded from Python's `random` at construction): `seed_pass` reseeds every library
  before a pass builds its model, so a pass's model is the same whatever the process did before
  (a new run builds an extra model to count parameters; a resumed one starts at a later pass).
- dropout masks: each SeedGenerator's state advances every training step. It is not one of the
  model's weights, so a snapshot of `model.weights` alone restarted dropout from its first mask
  (the measured 9.3857 vs 9.4904 val_loss at epoch 7). `generator_states` lists those variables;
  harness.train.checkpoints stores and restores them with the snapshot.
- the optimizer's step count and momenta: its variables, already in the snapshot.
"""

from __future__ import annotations

# Mixes the pass index into the ledger seed; any odd constant well above a pass count works.
PASS_STRIDE = 1_000_003


def pass_seed(seed: int, index: int) -> int:
    """The seed pass `index` builds its model under (pass 0: the ledger seed itself)."""
    return (int(seed) + PASS_STRIDE * index) % (2 ** 32)


def seed_pass(seed: int, index: int) -> None:
    """Python, NumPy, TensorFlow and Keras's global seed, for building pass `index`'s model."""
    import keras

    keras.utils.set_random_seed(pass_seed(seed, index))


def generator_states(model) -> list:
    """The model's random-generator state variables (Keras SeedGenerator states: dropout and
    other random layers), in a fixed order: every variable of the model that is not a weight."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]
