"""The trainer's Prometheus metrics (its own registry: it runs beside workers that have theirs)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info


class TrainerMetrics:
    """Labels, runs, the training set and the gate's evaluations."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.labels = Counter("mmcl_feedback_labels", "Feedback labels by result: received, matched, unmatched, "
                              "replaced, invalid", ["result"], registry=r)
        self.features = Counter("mmcl_trainer_joined_features", "Joined features stored", registry=r)
        self.training_set = Gauge("mmcl_training_set_size", "Labelled examples with features", registry=r)
        self.runs = Counter("mmcl_training_runs", "Retraining runs by outcome: promoted, rejected, failed",
                            ["outcome"], registry=r)
        self.run_seconds = Histogram("mmcl_training_run_seconds", "Duration of a retraining run",
                                     buckets=(1, 5, 15, 60, 300, 900, 3600, 14400), registry=r)
        self.evaluation = Gauge("mmcl_training_evaluation", "Held-out metrics of the last run",
                                ["model", "metric"], registry=r)
        self.current = Info("mmcl_trainer_model", "The current model version", registry=r)
        self.training = Gauge("mmcl_training_in_progress", "1 while a run trains", registry=r)
        self.last_check = Gauge("mmcl_trainer_last_check_timestamp_seconds",
                                "When the trainer last committed its store and checked whether a run is due", registry=r)
