"""The ledger: YAML -> `extends` resolution -> validated, frozen Iteration; diff, sweep space, promote.

Owns: the schema (`schema`: every key an iteration may hold), reading a file with the line of
every key (`loader`), resolution and profiles applied (`resolve`, `book.Ledger`), dotted paths and
the diff vs parent (`diffing`; `changes`: the diff in the notes' short form; `profiles`: what a
profile changed, in words), which ledger holds an ITER (`locate`), a sweep's search space
(`space`) and the ledger edit of `--promote` (`promote`).
May import: harness.core and harness.models.catalog (the backbone options it validates against);
pydantic and yaml. Never TensorFlow, MLflow or Optuna.

The names below are the package's public face (`from harness import ledger; ledger.load(...)`);
modules inside the package import from each other's modules, never from here.
"""

from harness.ledger.book import Ledger, load
from harness.ledger.diffing import diff, flatten, format_change, short_value
from harness.ledger.loader import SWEEP_KEY, load_yaml
from harness.ledger.resolve import validate_dict, with_changes
from harness.ledger.schema import (DESCRIPTIVE_KEYS, BackboneConfig, FreezeRule, Iteration, LedgerError, PassConfig,
                                   PixelConfig, StepSchedule)
from harness.ledger.suggest import suggest_name

__all__ = ["DESCRIPTIVE_KEYS", "SWEEP_KEY", "BackboneConfig", "FreezeRule", "Iteration", "Ledger", "LedgerError",
           "PassConfig", "PixelConfig", "StepSchedule", "diff", "flatten", "format_change", "load", "load_yaml", "short_value",
           "suggest_name", "validate_dict", "with_changes"]
