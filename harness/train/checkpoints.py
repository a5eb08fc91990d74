"""What a run keeps on disk: its state and checkpoints, in its own work folder.

The folder is `harness.core.settings.WorkDir.run(run_id)` (by default mlruns/work/<run_id>):

    state.json              passes done, epochs done in the current pass, per-epoch history
    pass-K/epoch-E.npz      weights + optimizer state after the newest completed epoch E of pass K
    pass-K/best.npz         the same for the best epoch of pass K by its monitor (a hard link)
    pass-K/best.keras       the best model of pass K, a complete Keras file (at the pass's end)
    pass-K/final.keras      the weights pass K ended with (after restore-best)
    pass-K/last.keras       the last good epoch of a pass that diverged

Every file is written by `atomic_write`: under a temporary name, then renamed into place, so a
kill at any moment leaves the previous complete checkpoint to resume from. The state is written
before the epoch is reported, and carries the epoch's metrics, so a resumed run can report the
epochs that never reached the tracker and report none twice.

Why arrays every epoch and .keras files once a pass: Keras's .keras writer takes ~0.25 s for a
1.3M-parameter model (one HDF5 dataset per variable), a tenth of a CPU-profile epoch; the arrays
take ~0.04 s, and a new best is a hard link to the last snapshot, so it costs nothing.
No TensorFlow here: models are only asked to save, and to give and take arrays.
"""

from __future__ import annotations

import json
import os
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from harness.core import faults, metrics
from harness.core.errors import CorruptState
from harness.train.rng import generator_states

STATE_FILE = "state.json"


def atomic_write(path: Path, writer: Callable[[Path], None]) -> None:
    """Write `path` by calling `writer` with a temporary path beside it, then rename that into
    place: readers see the old file or the new one, never half of one. The temporary name keeps
    the suffix (Keras insists on `.keras`)."""
    path = Path(path)
    tmp = path.with_name(f"tmp-{path.name}")
    tmp.unlink(missing_ok=True)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: the half-written file would hold the space it needs
        raise


@dataclass
class RunState:
    done_passes: list = field(default_factory=list)
    pass_index: int = 0
    epochs_in_pass: int = 0  # completed epochs of pass_index
    history: list = field(default_factory=list)  # [{"step", "pass", "metrics"}]
    best: dict = field(default_factory=dict)  # str(pass index) or "index:monitor" -> {"value", "step"}
    wait: int = 0  # epochs since the monitor last improved (early stopping)
    snapshot: str = ""  # the newest epoch snapshot, relative to the work folder

    @property
    def step(self) -> int:
        return len(self.history)

    @staticmethod
    def exists(folder: Path) -> bool:
        """Whether a run's work folder holds a state to resume from."""
        return (Path(folder) / STATE_FILE).is_file()

    @classmethod
    def load(cls, folder: Path) -> "RunState":
        """The folder's state (a new one when it has none); CorruptState, naming the file and
        the ways out, when state.json is not one (truncated, garbage, fields of the wrong kind)."""
        path = Path(folder) / STATE_FILE
        if not path.exists():
            return cls()
        try:
            state = cls(**json.loads(path.read_text()))
            empty = cls()
            wrong = [key for key, value in state.__dict__.items() if not isinstance(value, type(getattr(empty, key)))]
            if wrong:
                raise ValueError(f"field {wrong[0]} is a {type(state.__dict__[wrong[0]]).__name__}")
        except (ValueError, TypeError) as exc:  # JSON and UTF-8 errors are ValueErrors
            raise CorruptState(damaged(path, f"not a run state ({type(exc).__name__}: {exc})")) from None
        return state

    def save(self, folder: Path) -> None:
        text = json.dumps(self.__dict__, indent=1)
        atomic_write(Path(folder) / STATE_FILE, lambda tmp: tmp.write_text(text))

    def start_pass(self, index: int) -> None:
        """Entering pass `index`: a pass other than the one in progress starts at its epoch 0."""
        if self.pass_index != index:
            self.pass_index, self.epochs_in_pass, self.wait = index, 0, 0

    def finish_pass(self, index: int) -> None:
        self.done_passes.append(index)
        self.pass_index, self.epochs_in_pass, self.wait = index + 1, 0, 0

    def improve(self, key: str, value: float, step: int, monitor: str) -> bool:
        """Record `value` of `monitor` at `step` under `key` if it beats the best so far."""
        previous = self.best.get(key)
        if not metrics.improves(value, previous["value"] if previous else None, monitor):
            return False
        self.best[key] = {"value": value, "step": step}
        return True

    def record_epoch(self, folder: "RunFolder", index: int, values: dict, snapshot: Path) -> Callable[[], None]:
        """An epoch of pass `index` is done and `snapshot` will hold it: recorded here, in
        memory; returns what persists it, to call once the snapshot is on disk: the state names
        it and is saved, then the previous epoch's snapshot goes."""
        previous = folder.resolve(self.snapshot)
        self.history.append({"step": self.step + 1, "pass": index, "metrics": values})
        self.epochs_in_pass += 1
        self.snapshot = folder.relative(snapshot)
        text = json.dumps(self.__dict__, indent=1)  # now: the training thread changes the state next

        def persist() -> None:
            atomic_write(Path(folder.root) / STATE_FILE, lambda tmp: tmp.write_text(text))
            if previous is not None and previous != snapshot:
                previous.unlink(missing_ok=True)

        return persist

    def should_stop(self, index: int, pass_, values: dict, step: int, improved: bool) -> bool:
        """Early stopping after an epoch of pass `index` (`improved`: the pass's monitor did):
        True once the stopping monitor has not improved for `patience` epochs."""
        stopping = pass_.early_stopping
        if stopping is None:
            return False
        if stopping.monitor != pass_.monitor:
            improved = self.improve(f"{index}:{stopping.monitor}", values[stopping.monitor], step, stopping.monitor)
        self.wait = 0 if improved else self.wait + 1
        return self.stopped(pass_)

    def stopped(self, pass_) -> bool:
        """Whether early stopping has ended the pass in progress (also after a resume: a kill
        right after the deciding epoch must not train the pass further)."""
        return pass_.early_stopping is not None and self.wait >= pass_.early_stopping.patience

    def over_budget(self, index: int, pass_) -> bool:
        """Whether pass `index` has spent its cost cap (`max_seconds`): one more epoch at its
        mean measured epoch time would not fit. Counted from the recorded epochs, so a resumed
        pass keeps the time its killed process spent."""
        if pass_.max_seconds is None:
            return False
        seconds = [h["metrics"].get("epoch_seconds", 0.0) for h in self.history if h["pass"] == index]
        return bool(seconds) and sum(seconds) * (1 + 1 / len(seconds)) > pass_.max_seconds

    def stopping_best(self, index: int, pass_) -> Optional[dict]:
        """{"value", "step"}: the best value of pass `index`'s early-stopping monitor so far."""
        monitor = pass_.early_stopping.monitor
        return self.best.get(str(index) if monitor == pass_.monitor else f"{index}:{monitor}")


def damaged(path: Path, what: str) -> str:
    """The one line for a run state file that cannot be read: which file, what is wrong with it,
    and the ways out. The run's folder is the state file's (or the snapshot's pass folder's) parent."""
    path = Path(path)
    folder = path.parent if path.name == STATE_FILE else path.parent.parent
    return (f"{path}: {what}, so run {folder.name[:8]} cannot resume; nothing was written or removed. "
            f"Run the same command with --fresh to start a new run (this folder is kept), or move {folder} "
            f"away (or remove it) to drop that run's saved state")


def check_snapshot(path: Path) -> None:
    """CorruptState unless `path` is a complete epoch snapshot: every array read (the zip's
    checksums checked on the way), weights among them. Costs one read of the file."""
    try:
        with np.load(path) as data:
            for name in data.files:
                data[name]
            if "w0" not in data.files:
                raise ValueError("it holds no weights")
    except FileNotFoundError:
        raise CorruptState(damaged(path, "the epoch snapshot state.json names is missing")) from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise CorruptState(damaged(path, f"the epoch snapshot is damaged, truncated perhaps "
                                         f"({type(exc).__name__}: {exc})")) from None


def check_resumable(folder: Path) -> bool:
    """Whether a run's work folder holds a state to resume from (False: none at all); CorruptState
    when it holds one that cannot be used (state.json, or the snapshot it names, unreadable), so
    the run refuses before it opens anything instead of failing after it has started."""
    folder = Path(folder)
    if not RunState.exists(folder):
        return False
    state = RunState.load(folder)
    if state.snapshot:
        check_snapshot(folder / state.snapshot)
    return True


class RunFolder:
    """The paths of one run's work folder (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def pass_dir(self, index: int) -> Path:
        path = self.root / f"pass-{index + 1}"
        path.mkdir(exist_ok=True)
        return path

    def epoch_snapshot(self, index: int, epoch: int) -> Path:
        """A new name per epoch (1-based within the pass)."""
        return self.pass_dir(index) / f"epoch-{epoch}.npz"

    def best_snapshot(self, index: int) -> Path:
        return self.pass_dir(index) / "best.npz"

    def model_file(self, index: int, which: str) -> Path:
        """`which`: best, final or last (see the module docstring)."""
        return self.pass_dir(index) / f"{which}.keras"

    def checkpoint(self, index: int, which: str = "best") -> Path:
        """The model file a pass hands on: its `which` (best or final) model, falling back to
        final when the pass never improved and so has no best."""
        path = self.model_file(index, which)
        return path if path.exists() else self.model_file(index, "final")

    def resolve(self, relative: str) -> Optional[Path]:
        return self.root / relative if relative else None

    def relative(self, path: Path) -> str:
        return str(Path(path).relative_to(self.root))


def capture_snapshot(model) -> dict:
    """What save_snapshot writes, read now: weights (model.weights order), the random generators'
    states (dropout masks continue where they were, see harness.train.rng) and, once built, the
    optimizer's variables (its step count and momenta): everything a resumed epoch needs to be
    bit-exact. On TensorFlow outside a distribution strategy, as tensors read with tf.identity:
    a read is a copy-on-write snapshot (the next training step writes new buffers), so it costs
    ~10 ms for the custom CNN's 278 variables where copying them into NumPy costs 30-60 ms, and
    the copy happens on the background writer instead (`write_snapshot`)."""
    import keras

    variables = {f"w{i}": v for i, v in enumerate(model.weights)}
    variables.update({f"r{i}": v for i, v in enumerate(generator_states(model))})
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        variables.update({f"o{i}": v for i, v in enumerate(optimizer.variables)})
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.distribute.has_strategy():
            return {key: tf.identity(v.value if hasattr(v, "value") else v) for key, v in variables.items()}
    return {key: np.array(v, copy=True) for key, v in variables.items()}  # mirrored variables: copied now


def write_snapshot(arrays: dict, path: Path) -> None:
    """A captured snapshot (capture_snapshot) as one .npz, atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **{key: np.asarray(value) for key, value in arrays.items()})
            handle.flush()
            faults.reach("during-snapshot")

    atomic_write(path, write)


def save_snapshot(model, path: Path) -> None:
    """The model's weights, random and optimizer state, as arrays (see capture_snapshot)."""
    write_snapshot(capture_snapshot(model), path)


class EpochWriter:
    """Writes one epoch's files (snapshot, best link, state.json) and reports the epoch on a
    background thread, so the next epoch starts at once: for the custom CNN at 64 px that work
    was ~50-100 ms of each 4.4 s epoch (BENCHMARKS.md row (c)), plus the logging's round trip.
    `join` waits for it and raises what it raised (a full disk, a lost tracking server, a pruned
    trial); the Runner joins before the next epoch's bookkeeping, at the end of each pass and
    at every exit, so the order on disk and in the tracker stays: snapshot, state, report."""

    def __init__(self):
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def submit(self, job: Callable[[], None]) -> None:
        self.join()

        def run() -> None:
            try:
                job()
            except BaseException as exc:  # handed to the training thread by join
                self._error = exc

        self._thread = threading.Thread(target=run, name="harness-epoch-writer", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error


def load_snapshot(model, path: Path, optimizer: bool = True) -> None:
    """Put a snapshot's weights (and, to resume, its random and optimizer state) back into a
    model built and compiled exactly as the one that was saved."""
    with np.load(path) as data:
        model.set_weights([data[f"w{i}"] for i in range(len(model.weights))])
        if optimizer:
            for i, variable in enumerate(generator_states(model)):
                if f"r{i}" in data.files:  # snapshots written before the states were kept lack them
                    variable.assign(data[f"r{i}"])
        if optimizer and "o0" in data.files:
            opt = model.optimizer
            if not opt.built:
                opt.build(model.trainable_variables)
            for i, variable in enumerate(opt.variables):
                variable.assign(data[f"o{i}"])


def save_model(model, path: Path) -> None:
    """The whole model as a .keras file."""
    atomic_write(path, lambda tmp: model.save(tmp))


def link(source: Path, path: Path) -> None:
    """`path` becomes another name for `source`'s current contents (source is later replaced
    by rename, so the link keeps these bytes)."""
    atomic_write(path, lambda tmp: os.link(source, tmp))


def save_last_good(folder: RunFolder, state: RunState, index: int, model) -> None:
    """A diverged pass: its last good epoch (the newest snapshot, if it is this pass's) as
    pass-K/last.keras, loadable by anyone."""
    last = folder.resolve(state.snapshot)
    if last is not None and last.parent == folder.pass_dir(index):
        load_snapshot(model, last, optimizer=False)
        save_model(model, folder.model_file(index, "last"))


def save_pass_models(folder: RunFolder, index: int, model, restore_best: bool) -> None:
    """A finished pass: best.keras from its best snapshot (if it ever improved), final.keras
    from the weights it ends with, which are the best ones under `restore_best`."""
    best = folder.best_snapshot(index)
    if best.exists():
        ended = None if restore_best else model.get_weights()
        load_snapshot(model, best, optimizer=False)
        save_model(model, folder.model_file(index, "best"))
        if ended is not None:
            model.set_weights(ended)
    save_model(model, folder.model_file(index, "final"))
