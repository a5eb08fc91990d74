"""The ledger harness: train the iterations declared in a YAML ledger and track them in MLflow.

Importing the package is cheap on purpose: commands that only read the ledger (list, show,
validate, table) must answer in about a second, so nothing here imports TensorFlow or MLflow.
"""

__version__ = "0.1.0"
