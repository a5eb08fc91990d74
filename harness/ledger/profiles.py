"""What a profile changed in an iteration, in words: the first line of a run's output.

A profile (ledger `profiles:`) changes how much is computed (image size, number of images, epochs a
pass, early-stopping patience, batch size, compute switches), never what is modelled. A researcher
reading a cpu-profile number must know exactly how far it is from the ledger as written, so the run
announces every change with its numbers, taken from the diff of the iteration as written against
the iteration under the profile (not from a hand-written description that can drift). Pure Python.
"""

from __future__ import annotations

from collections import defaultdict

from harness import ledger


def _passes(indices: list[int]) -> str:
    numbers = [i + 1 for i in sorted(indices)]
    if len(numbers) == 1:
        return f"pass {numbers[0]}"
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"passes {numbers[0]}-{numbers[-1]}"
    return "passes " + ", ".join(map(str, numbers))


def _images(limit) -> str:
    return "all images (no limit)" if limit is None else f"at most {limit:,} images"


def _cached_rule(profiled: ledger.Iteration, indices: list[int], seconds: str) -> str:
    """The cached-feature rule as the first line states it: which passes, what they keep."""
    kept = "their epochs"
    if len(indices) == len(profiled.passes):
        kept = f"the ledger's {profiled.data.image_size} px, batch and epochs"
    verbs = ("trains", "keeps") if len(indices) == 1 else ("train", "keep")
    return (f"{_passes(indices)} {verbs[0]} on cached backbone features and {verbs[1]} {kept}, "
            f"each capped by measured cost at {seconds} s")


def describe_changes(written: ledger.Iteration, profiled: ledger.Iteration) -> list[str]:
    """The profile's changes as short phrases, in a fixed order: image size, images, epochs,
    patience, batch, then anything else; per-pass changes that agree are said once."""
    phrases: list[str] = []
    per_pass: dict[tuple, list[int]] = defaultdict(list)
    others: list[str] = []
    for key, old, new in ledger.diff(written, profiled):
        parts = key.split(".")
        if key == "data.image_size":
            phrases.insert(0, f"image size {old}->{new} px")
        elif key == "data.limit":
            continue  # said below either way: the number of images is always announced
        elif parts[0] == "passes" and len(parts) > 2:
            per_pass[(".".join(parts[2:]), ledger.short_value(old), ledger.short_value(new))].append(int(parts[1]))
        elif key == "data.cache":
            others.append(f"decoded images cached ({new})")
        elif parts[0] == "batch_size":
            others.append(f"batch {parts[1]} {old}->{new}")
        elif key == "compute.mixed_precision":
            others.append(f"computed in {new} (compute.mixed_precision {old}->{new})")
        else:
            others.append(f"{key} {ledger.short_value(old)}->{ledger.short_value(new)}")
    phrases.append(_images(profiled.data.limit))
    labels = {"epochs": "epochs a pass", "early_stopping.patience": "early-stopping patience"}
    for (field, old, new), indices in sorted(per_pass.items(), key=lambda item: (item[0][0] != "epochs", item[0])):
        if field == "max_seconds":
            phrases.append(_cached_rule(profiled, indices, new))
            continue
        phrases.append(f"{labels.get(field, field)} {old}->{new} ({_passes(indices)})")
    if not any(p.startswith("batch") for p in others):
        phrases.append(f"batch {profiled.batch_size.train}/{profiled.batch_size.eval} (as written)")
    return phrases + others


def announcement(name: str, profile: str, reason: str, written: ledger.Iteration, profiled: ledger.Iteration,
                 ledger_path) -> str:
    """The run's first line: which profile, why, what it changed, and how to train as written."""
    if profile == "full":
        return f"profile full ({reason}): training {name} as written"
    changes = "; ".join(describe_changes(written, profiled))
    return (f"profile {profile} ({reason}): {changes}; model, loss, optimizer and LR as written. "
            f"To train as written: harness run {name} --ledger {ledger_path} --profile full")
