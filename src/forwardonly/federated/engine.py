"""Federated zeroth-order training in which clients exchange seeds and scalars only.

Each round, every client starts from the round's global weights, takes ``local_steps`` ZO steps on
its own examples with any registered ZO optimizer (:mod:`forwardonly.optim`), and sends each step as
its direction key and projected gradients (:mod:`forwardonly.federated.wire`): 12 bytes a step for
``q = 1``, never a weight. The server, and every client for the next round, replays all clients' steps
onto the global weights through the same optimizer (``replay_update``, the seed-log machinery of
:mod:`forwardonly.checkpoint`), each at ``lr / clients`` (``aggregate: mean``, FedAvg of the clients'
updates) or ``lr`` (``sum``). A step's directions are keyed ``(round * clients + client) * local_steps +
k``, so no two clients' steps share a direction, and the learning rate of a key is that of the client's
local step ``round * local_steps + k`` in the run's schedule.

With one client and an IID split the run is ``forwardonly train`` with the same config: the same
examples per step, the same directions and the same update, bitwise (ZO-SGD and every optimizer whose
update of a step reads only that step's scalars and its own state; a stateful optimizer's state is
the server's, advanced by the replay). FedZO (Fang et al. 2022) and FedKSeed (Qin et al. 2024) send
seeds and scalars the same way.

Example::

    from forwardonly.config import load_config
    from forwardonly.lm.config import TrainConfig
    from forwardonly.federated import run_federated

    cfg = load_config(TrainConfig, "run.yaml", ["federated.clients=8", "federated.alpha=0.5"])
    summary = run_federated(cfg)
    summary["test_after"]["accuracy"], summary["bytes_per_client_round"]
"""

from __future__ import annotations

import copy

import torch

from ..errors import UserError
from ..lm.setup import build_optimizer, lr_at, setup, step_examples, trainable_names
from . import wire
from .config import FederatedConfig
from .split import dirichlet_split, example_label, label_counts


def check(cfg) -> FederatedConfig:
    """The run's federated section, after the checks a federated run needs (one-line errors)."""
    fc = cfg.federated or FederatedConfig()
    o = cfg.optim
    if not o.zeroth_order:
        raise UserError(f"federated: optim.name={o.name} is first-order; clients send ZO steps (seeds and scalars)")
    from ..optim import info

    if not info(o.name).capabilities.replay:
        raise UserError(f"federated: optim.name={o.name} cannot be replayed from seeds and scalars")
    if o.lr == "auto":
        raise UserError("federated: optim.lr=auto tunes each step on the client's data; give a number")
    if cfg.model.offload is not None or cfg.model.precision != "pure":
        raise UserError("federated: model.offload and model.precision=mixed are not supported; hold the model plainly")
    if cfg.nproc != 1:
        raise UserError(f"federated: nproc={cfg.nproc}; the clients are simulated in one run (nproc=1)")
    if cfg.steps % fc.local_steps:
        raise UserError(f"federated: steps={cfg.steps} is not a multiple of federated.local_steps={fc.local_steps}")
    if (cfg.steps // fc.local_steps) * fc.clients * fc.local_steps >= 2 ** 32:
        raise UserError("federated: rounds * clients * local_steps must stay below 2**32 (32-bit direction keys)")
    return fc


class Federation:
    """One replica of a federated ZO run: the model, the optimizer and every client's examples.

    The local engine keeps one replica for the server and all clients (a client's local steps are undone
    after it has sent them); the Flower engine keeps one per process. :meth:`client_round` is a client's
    work in a round, :meth:`apply_round` the replay of every client's message onto the global weights.

    Args:
        cfg: a :class:`~forwardonly.lm.config.TrainConfig` with a ``federated`` section.
        log: where progress messages go.
    """

    def __init__(self, cfg, log=lambda msg: None):
        from ..lm.holders import Holder

        self.cfg, self.fc = cfg, check(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.holder = Holder(cfg.model, None, cfg.device)
        self.model, self.tok, self.task, self.objective, self.params = setup(cfg, log, self.holder)
        self.opt = build_optimizer(cfg, self.params, trainable_names(self.model))
        self.holder.attach(self.model, self.opt)
        self.model.eval()  # as forwardonly train's ZO runs: no dropout between the two perturbed losses
        train = self.task.splits.get(cfg.task.train_split, [])[: cfg.task.max_train]
        labels = [example_label(ex) for ex in train]
        seed = cfg.seed if self.fc.split_seed is None else self.fc.split_seed
        self.parts = dirichlet_split(labels, self.fc.clients, self.fc.alpha, seed)
        for c, part in enumerate(self.parts):
            if not part:
                raise UserError(f"federated: client {c} got no training examples (alpha={self.fc.alpha}, "
                                f"{len(train)} examples); raise federated.alpha or lower federated.clients")
        self.shards = [[train[i] for i in part] for part in self.parts]
        self.label_counts = label_counts(labels, self.parts)
        self.rounds = cfg.steps // self.fc.local_steps
        self.applied = 0  # rounds replayed onto this replica's weights
        self.forwards = 0  # forwards of the clients this replica has simulated

    # ----------------------------------------------------------------- keys
    def key(self, rnd: int, client: int, k: int) -> int:
        """The direction key of local step ``k`` of ``client`` in round ``rnd``."""
        return (rnd * self.fc.clients + client) * self.fc.local_steps + k

    def local_step_of(self, key: int) -> int:
        """The client's local step (its place in the learning-rate schedule) of a direction key."""
        per_round = self.fc.clients * self.fc.local_steps
        return (key // per_round) * self.fc.local_steps + key % self.fc.local_steps

    def _set_lr(self, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr

    # -------------------------------------------------------------- client
    @torch.no_grad()
    def client_round(self, client: int, rnd: int) -> tuple[bytes, float]:
        """Client ``client``'s local steps of round ``rnd`` from the current (global) weights, undone
        afterwards; returns its message and its mean training loss."""
        opt = self.opt
        weights = [p.detach().clone() for p in self.params]
        state = copy.deepcopy(opt.state_dict())
        forwards, pairs, losses = opt.zo_state["forwards"], [], []
        for k in range(self.fc.local_steps):
            key = self.key(rnd, client, k)
            loss, grads = self._local_step(client, rnd * self.fc.local_steps + k, key)
            pairs.append((key, grads))
            if grads is not None:
                losses.append(loss)
        self.forwards += opt.zo_state["forwards"] - forwards
        for p, w in zip(self.params, weights):  # back to the global weights: the server's replay moves them
            p.copy_(w)
        opt.load_state_dict(state)
        return wire.encode(pairs, opt.q), sum(losses) / len(losses) if losses else float("nan")

    def _local_step(self, client: int, t: int, key: int) -> tuple[float, list[float] | None]:
        """One ZO step of ``client`` (its local step ``t``) with directions ``key``: ``(loss, grads)``,
        ``grads`` None for a step skipped as non-finite."""
        cfg, opt, zs = self.cfg, self.opt, self.opt.zo_state
        examples = step_examples(self.shards[client], cfg.seed, t, cfg.batch_size * cfg.accum_steps, cfg.bucket)
        micro = len(examples) // cfg.accum_steps
        batches = [self.objective.batch(examples[i * micro:(i + 1) * micro], cfg.device)
                   for i in range(cfg.accum_steps)]
        lossf = self.objective.paired_loss if opt.paired else self.objective.loss
        self._set_lr(lr_at(cfg, t, cfg.steps))
        zs["step"] = key
        skipped = zs["skipped"]
        if len(batches) == 1:
            loss = float(opt.step(lambda: lossf(self.model, batches[0])))
        else:
            loss = float(opt.step(lambda i: lossf(self.model, batches[i])))
        if zs.get("last_scalars"):
            raise UserError(f"federated: optim.name={cfg.optim.name} logs scalars beyond its projected gradients "
                            f"({', '.join(zs['last_scalars'])}); its steps cannot be sent as (seed, gradient)")
        return loss, (list(zs["last_grads"]) if zs["skipped"] == skipped else None)

    # -------------------------------------------------------------- server
    @torch.no_grad()
    def apply_round(self, messages: list[bytes]) -> None:
        """Replay every client's message of the next round onto the global weights, client by client."""
        fc, opt = self.fc, self.opt
        share = fc.server_lr / (fc.clients if fc.aggregate == "mean" else 1)
        for data in messages:
            for key, grads in wire.decode(data, opt.q):
                if grads is None:
                    continue
                self._set_lr(lr_at(self.cfg, self.local_step_of(key), self.cfg.steps) * share)
                opt.replay_update(key, grads)
        self.applied += 1

    def evaluate(self, split: str, limit: int | None) -> dict:
        from ..tasks import evaluate

        cfg = self.cfg
        return evaluate(self.model, self.tok, self.task, split, batch_size=cfg.eval_batch_size, max_examples=limit,
                        device=cfg.device, progress=False, max_length=cfg.task.max_length)


def traffic_summary(sent: list[list[int]], forwards: int, history: list, **extra) -> dict:
    """What was sent: ``sent[round][client]`` payload bytes, summarised."""
    flat = [b for row in sent for b in row]
    return {"forwards": forwards, "history": history, "bytes_sent": sent,
            "bytes_per_client_round": max(flat) if flat else 0,
            "bytes_total_uplink": sum(flat), **extra}
