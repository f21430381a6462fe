"""The federated run on Flower's simulation engine (the ``federated`` extra: ``flwr[simulation]``, Ray).

A Flower ``ServerApp`` drives the rounds; each simulated client is a Flower ``ClientApp`` that runs in a
Ray actor process. Every process keeps its own replica of the run (:class:`~.engine.Federation`: the
model, the optimizer, the client splits), built once. Each round the server sends every client the
steps of all earlier rounds (``history``: a replica applies those it has not yet applied, so a replica
that served no client for some rounds catches up), and each client answers with its own steps of the
round: :mod:`~.wire`'s bytes, the only thing it sends beside its loss and forward count. The server's
replica (this process) replays every answer, in client order, exactly as the local engine does, so both
engines give the same weights.

What is counted: ``bytes_sent[round][client]`` is the length of the client's packed steps, the payload
of its answer. Flower's own framing (message metadata, record names, the loss and forwards scalars kept
for the log) is not counted; in a simulation no bytes cross a network, so there is nothing else to count.
The history the server sends down grows with the rounds; its size per round is reported as
``bytes_down_per_client_round``.
"""

from __future__ import annotations

import json
import struct

from ..errors import RunError
from .engine import Federation, traffic_summary

_LEN = struct.Struct("<I")
_REPLICAS: dict[str, Federation] = {}  # one per process and run config (a Ray actor serves many clients)


def _flwr():
    from ..errors import require

    require("flwr", "federated.engine=flower")
    require("ray", "federated.engine=flower (Flower's simulation engine)")
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    return ConfigRecord, Context, Message, RecordDict, ClientApp, Grid, ServerApp, run_simulation


def pack_history(rounds: list[list[bytes]]) -> bytes:
    """Every round's client messages, each prefixed by its length; a round by its client count."""
    out = bytearray()
    for msgs in rounds:
        out += _LEN.pack(len(msgs))
        for m in msgs:
            out += _LEN.pack(len(m)) + m
    return bytes(out)


def unpack_history(data: bytes) -> list[list[bytes]]:
    rounds, off = [], 0
    while off < len(data):
        (n,) = _LEN.unpack_from(data, off)
        off += _LEN.size
        msgs = []
        for _ in range(n):
            (size,) = _LEN.unpack_from(data, off)
            msgs.append(data[off + _LEN.size: off + _LEN.size + size])
            off += _LEN.size + size
        rounds.append(msgs)
    return rounds


def _replica(cfg) -> Federation:
    from ..config import to_dict

    key = json.dumps(to_dict(cfg), sort_keys=True)
    if key not in _REPLICAS:
        _REPLICAS[key] = Federation(cfg)
    return _REPLICAS[key]


def client_app(cfg):
    """The Flower ``ClientApp`` of a run: catch up on the history, take the round's local steps."""
    ConfigRecord, _, Message, RecordDict, ClientApp, *_ = _flwr()
    app = ClientApp()

    @app.train()
    def train(msg, context):
        rec = msg.content["fed"]
        fed = _replica(cfg)
        for msgs in unpack_history(rec["history"])[fed.applied:]:
            fed.apply_round(msgs)
        before = fed.forwards
        payload, loss = fed.client_round(int(rec["client"]), int(rec["round"]))
        out = ConfigRecord({"steps": payload, "loss": float(loss), "forwards": fed.forwards - before})
        return Message(RecordDict({"fed": out}), reply_to=msg)

    return app


def server_app(cfg, fed: Federation, result: dict, log):
    """The Flower ``ServerApp``: send each round to every client, replay the answers on ``fed``."""
    ConfigRecord, _, Message, RecordDict, _, _, ServerApp, _ = _flwr()
    app = ServerApp()

    @app.main()
    def main(grid, context):
        nodes = _wait_for_nodes(grid, fed.fc.clients)
        history: list[list[bytes]] = []
        sent, down, logrows = [], [], []
        for rnd in range(fed.rounds):
            packed = pack_history(history)
            msgs = [Message(RecordDict({"fed": ConfigRecord({"round": rnd, "client": c, "history": packed})}),
                            dst_node_id=node, message_type="train") for c, node in enumerate(nodes)]
            by_node = {r.metadata.src_node_id: r for r in grid.send_and_receive(msgs)}
            answers = []
            for c, node in enumerate(nodes):
                reply = by_node.get(node)
                if reply is None or reply.has_error():
                    why = reply.error.reason if reply is not None else "no reply"
                    raise RunError(f"federated client {c} failed in round {rnd + 1}: {why}")
                answers.append(reply.content["fed"])
            payloads = [bytes(a["steps"]) for a in answers]
            fed.apply_round(payloads)
            fed.forwards += sum(int(a["forwards"]) for a in answers)
            history.append(payloads)
            sent.append([len(p) for p in payloads])
            down.append(len(packed))
            loss = sum(float(a["loss"]) for a in answers) / len(answers)
            logrows.append({"round": rnd + 1, "loss": loss, "forwards": fed.forwards})
            log(f"round {rnd + 1}/{fed.rounds}: mean client loss {loss:.4f}")
        result.update(traffic_summary(sent, fed.forwards, logrows, bytes_down_per_client_round=down))

    return app


def _wait_for_nodes(grid, n: int, timeout_s: float = 300.0) -> list[int]:
    """The ids of the ``n`` simulated clients, once all have registered."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n:
            return nodes[:n]
        if time.monotonic() > deadline:
            raise RunError(f"federated: {len(nodes)} of {n} Flower clients registered in {timeout_s:.0f} s")
        time.sleep(0.2)


def simulate(cfg, fed: Federation, log) -> dict:
    """Run ``fed``'s rounds on Flower's simulation engine; returns what :func:`~.engine.traffic_summary` says."""
    *_, run_simulation = _flwr()
    result: dict = {}
    backend = {"client_resources": {"num_cpus": cfg.federated.flower_cpus, "num_gpus": 0.0},
               "init_args": {"include_dashboard": False, "log_to_driver": False}}
    run_simulation(server_app(cfg, fed, result, log), client_app(cfg), num_supernodes=fed.fc.clients,
                   backend_config=backend)
    if "forwards" not in result:
        raise RunError("federated: Flower's simulation ended without finishing its rounds (see its log above)")
    result["engine"] = "flower"
    return result
