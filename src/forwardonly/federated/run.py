"""Running a federation: :func:`run_federated` picks the engine (the clients one after another in this
process, or Flower's simulation engine) and scores the model before and after."""

from __future__ import annotations

import dataclasses
import time

from .config import FederatedConfig
from .engine import Federation, traffic_summary


def run_federated(cfg, *, log=lambda msg: None) -> dict:
    """Train as ``cfg`` (with its ``federated`` section) says; returns a summary with the accuracy before
    and after, the forwards spent by all clients and the bytes each client sent per round."""
    from ..bench.measure import peak_rss_bytes
    from ..config import to_dict

    cfg = cfg if cfg.federated is not None else dataclasses.replace(cfg, federated=FederatedConfig())
    fed = Federation(cfg, log)
    fc = fed.fc
    summary: dict = {"config": to_dict(cfg), "clients": fc.clients, "rounds": fed.rounds,
                     "client_examples": [len(s) for s in fed.shards], "client_labels": fed.label_counts}
    if cfg.test and cfg.eval_before:
        summary["test_before"] = fed.evaluate(cfg.task.test_split, cfg.task.max_test)
        log(f"before: {cfg.task.test_split} {summary['test_before']}")
    t0 = time.perf_counter()
    if fc.engine == "flower":
        from .flower import simulate  # Flower and Ray only when asked for

        traffic = simulate(cfg, fed, log)
    else:
        traffic = _local_rounds(fed, log)
    summary["train_time_s"] = time.perf_counter() - t0
    summary.update(traffic)
    if cfg.validate:
        summary["validation_after"] = fed.evaluate(cfg.task.eval_split, cfg.task.max_eval)
    if cfg.test:
        summary["test_after"] = fed.evaluate(cfg.task.test_split, cfg.task.max_test)
        log(f"after: {cfg.task.test_split} {summary['test_after']}")
    summary["peak_rss_bytes"] = peak_rss_bytes()
    summary["model"], summary["tokenizer"] = fed.model, fed.tok
    return summary


def _local_rounds(fed: Federation, log) -> dict:
    """Every round with the clients one after another in this process."""
    sent: list[list[int]] = []
    history = []
    for rnd in range(fed.rounds):
        out = [fed.client_round(c, rnd) for c in range(fed.fc.clients)]
        fed.apply_round([m for m, _ in out])
        sent.append([len(m) for m, _ in out])
        history.append({"round": rnd + 1, "loss": sum(x for _, x in out) / len(out), "forwards": fed.forwards})
        log(f"round {rnd + 1}/{fed.rounds}: mean client loss {history[-1]['loss']:.4f}")
    return traffic_summary(sent, fed.forwards, history)
