"""Prometheus metrics of a training stage, served by rank 0 only.

One registry per process (not the global default) so tests can build several and so nothing a
library registers leaks into the scrape. Only rank 0 serves: every rank sees the same loss after
the all-reduce, and one scrape target per gang keeps the chart's ServiceMonitor simple.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class StageMetrics:
    def __init__(self, stage: str) -> None:
        self.stage = stage
        r = self.registry = CollectorRegistry()
        labels = ["stage"]
        self.step = Gauge("forgeline_train_step", "Optimizer steps completed", labels, registry=r)
        self.total_steps = Gauge("forgeline_train_total_steps", "Planned optimizer steps", labels, registry=r)
        self.loss = Gauge("forgeline_train_loss", "Training loss at the last logging step", labels, registry=r)
        self.tokens = Counter("forgeline_train_tokens", "Tokens processed (all ranks)", labels, registry=r)
        self.step_seconds = Histogram(
            "forgeline_train_step_duration_seconds",
            "Wall time of one optimizer step",
            labels,
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.last_step = Gauge(
            "forgeline_last_step_timestamp_seconds", "Unix time of the last step", labels, registry=r
        )
        self.eval_loss = Gauge(
            "forgeline_eval_loss", "Held-out loss at the last evaluation (before, during, after training)", labels,
            registry=r,
        )  # fmt: skip
        self.reward = Gauge("forgeline_rlhf_reward", "Mean reward of the last RLHF batch", labels, registry=r)
        self.accuracy = Gauge(
            "forgeline_reward_accuracy", "Held-out pairwise accuracy of the reward model", labels, registry=r
        )
        # The eval stage's table, one series per model (and N): what the EvalJob measured.
        by_model = ["stage", "model"]
        self.eval_win_rate = Gauge(
            "forgeline_eval_win_rate", "Win rate against the baseline, judged by the reward model", by_model, registry=r
        )
        self.eval_rating = Gauge("forgeline_eval_rating", "Bradley-Terry rating (baseline 1000)", by_model, registry=r)
        self.eval_rm_score = Gauge("forgeline_eval_rm_score", "Mean reward-model score", by_model, registry=r)
        self.eval_best_of_n = Gauge(
            "forgeline_eval_best_of_n_score", "Expected best reward-model score of N", [*by_model, "n"], registry=r
        )
        self.ckpt_seconds = Histogram(
            "forgeline_checkpoint_save_duration_seconds",
            "Wall time of one checkpoint save and upload",
            labels,
            registry=r,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        )
        self.ckpt_bytes = Counter("forgeline_checkpoint_bytes", "Bytes written by checkpoint saves", labels, registry=r)
        self.port: int | None = None

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)
            self.port = port

    def on_step(self, step: int, tokens: int, seconds: float) -> None:
        self.step.labels(self.stage).set(step)
        self.tokens.labels(self.stage).inc(tokens)
        self.step_seconds.labels(self.stage).observe(seconds)
        self.last_step.labels(self.stage).set(time.time())

    def on_log(self, loss: float | None) -> None:
        if loss is not None:
            self.loss.labels(self.stage).set(loss)

    def on_eval(self, values: dict[str, float]) -> None:
        if isinstance(values.get("eval_loss"), int | float):
            self.eval_loss.labels(self.stage).set(values["eval_loss"])
        if isinstance(values.get("eval_accuracy"), int | float):
            self.accuracy.labels(self.stage).set(values["eval_accuracy"])

    def on_eval_result(self, models: dict[str, dict[str, Any]]) -> None:
        """Per model: {winRate, rating, rmScore: {mean}, bestOfN: {n: {mean}}} as the eval stage reports them."""
        for name, result in models.items():
            for gauge, key in (
                (self.eval_win_rate, "winRate"),
                (self.eval_rating, "rating"),
                (self.eval_rm_score, "rmScore"),
            ):
                if key in result:
                    gauge.labels(self.stage, name).set(result[key]["mean"])
            for n, estimate in (result.get("bestOfN") or {}).items():
                self.eval_best_of_n.labels(self.stage, name, str(n)).set(estimate["mean"])

    def on_checkpoint(self, seconds: float, nbytes: int) -> None:
        self.ckpt_seconds.labels(self.stage).observe(seconds)
        self.ckpt_bytes.labels(self.stage).inc(nbytes)
