"""What a run prints: the training loop's events as lines on the console, handed on to the tracker.
"""

from __future__ import annotations



from harness.core import metrics


class ConsoleReporter:
    """Prints a header per pass and passes every event on to the tracker."""

    def __init__(self, tracker, iteration, data_label: str, profile: str, log=print):
        self.tracker, self.iteration, self.data_label, self.profile, self.log = tracker, iteration, data_label, profile, log

    def pass_started(self, index, iteration, freeze):
        pass_ = iteration.passes[index]
        start = "" if index == 0 else f", from pass {index}'s {pass_.resume_from}"
        stopping = f", early stopping patience {pass_.early_stopping.patience}" if pass_.early_stopping else ""
        if pass_.max_seconds:
            stopping += f", capped by measured cost at {pass_.max_seconds} s"
        # Rules that decide no layer are usually typos, or patterns meant for another backbone.
        unmatched = f" | freeze rules that decide no layer: {', '.join(freeze.unmatched)}" if freeze.unmatched else ""
        from harness.train.distribute import batch_phrase

        replicas = batch_phrase(iteration.compute.distribute, iteration.batch_size.train)
        self.log(f"== {iteration.name} pass {index + 1}/{len(iteration.passes)}: {pass_.epochs} epochs, "
                 f"{pass_.describe_lr(iteration.optimizer.lr)}{start}{stopping} | data {self.data_label} | "
                 f"{replicas + ' | ' if replicas else ''}profile {self.profile}{unmatched}")
        self.tracker.pass_started(index, iteration, freeze)

    def epoch_finished(self, pass_index, step, values):
        self.tracker.epoch_finished(pass_index, step, values)

    def flush(self):
        """The epochs' asynchronous logging landed (the Runner's writer waits for it); a tracker
        that logs synchronously (a test's recorder) has nothing to wait for."""
        flush = getattr(self.tracker, "flush", None)
        if flush is not None:
            flush()

    def pass_finished(self, index, result):
        self.log(metrics.eval_line(index, result.eval))
        self.tracker.pass_finished(index, result)
