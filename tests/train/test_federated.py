"""Federated ZO: splits, the wire format, bytes sent, and equality with a centralised run."""

import math

import pytest
import torch

from forwardonly.errors import UserError
from forwardonly.federated import dirichlet_split, wire
from forwardonly.federated.run import run_federated
from forwardonly.lm.train import run

LABELS = [i % 3 for i in range(300)]


def test_split_is_reproducible_disjoint_and_complete():
    a = dirichlet_split(LABELS, 8, 0.5, seed=0)
    assert a == dirichlet_split(LABELS, 8, 0.5, seed=0)  # a pure function of its inputs
    assert a != dirichlet_split(LABELS, 8, 0.5, seed=1)
    flat = sorted(i for part in a for i in part)
    assert flat == list(range(300))  # every example, once
    assert all(part == sorted(part) for part in a)  # the task's order kept within a client


def test_small_alpha_skews_labels_and_none_is_even():
    def skew(parts):  # mean over clients of the largest label share
        shares = [max(sum(LABELS[i] == y for i in p) for y in range(3)) / len(p) for p in parts if p]
        return sum(shares) / len(shares)

    assert skew(dirichlet_split(LABELS, 8, 0.1, seed=0)) > 0.75
    iid = dirichlet_split(LABELS, 8, None, seed=0)
    assert sorted(len(p) for p in iid) == [37] * 4 + [38] * 4
    assert skew(iid) < 0.5
    assert dirichlet_split(LABELS, 1, None, seed=3) == [list(range(300))]


@pytest.mark.parametrize("clients,alpha,msg", [(0, 0.5, "federated.clients=0"), (8, -1.0, "federated.alpha=-1.0"),
                                               (400, 0.5, "federated.clients=400 is more")])
def test_split_bad_input(clients, alpha, msg):
    with pytest.raises(UserError, match=msg):
        dirichlet_split(LABELS, clients, alpha, seed=0)


def test_wire_roundtrip_and_size():
    pairs = [(0, [0.25]), (7, [-1.5e-3]), (2 ** 32 - 1, None), (9, [math.pi])]
    data = wire.encode(pairs, q=1)
    assert len(data) == 4 * 12  # uint32 key + one float64 per probe
    assert wire.decode(data, q=1) == pairs
    assert len(wire.encode([(1, [1.0, 2.0])], q=2)) == 20
    with pytest.raises(ValueError, match="does not fit 32 bits"):
        wire.encode([(2 ** 32, [1.0])], q=1)
    with pytest.raises(UserError, match="not a whole number of 12-byte steps"):
        wire.decode(data[:-1], q=1)


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


BASE = ("steps=8", "optim.lr=1e-2", "scheme.name=full", "validate=false", "test=false", "task.max_train=32")


def test_one_iid_client_equals_centralised_bitwise(cfg_of):
    central = run(cfg_of(*BASE), progress=False)
    fed = run_federated(cfg_of(*BASE, "federated.clients=1", "federated.alpha=none", "federated.local_steps=4"))
    a, b = _weights(central["model"]), _weights(fed["model"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert fed["forwards"] == central["forwards"] == 16
    assert fed["bytes_sent"] == [[48], [48]]  # two rounds of four 12-byte steps


def test_bytes_per_client_round_and_forwards(cfg_of, tiny_dir):
    s = run_federated(cfg_of(*BASE, "federated.clients=3", "federated.local_steps=2", "federated.alpha=0.5"))
    assert s["rounds"] == 4
    assert s["bytes_sent"] == [[24, 24, 24]] * 4
    assert s["bytes_per_client_round"] == 24
    assert s["forwards"] == 3 * 8 * 2  # clients x local steps x two-sided
    assert sum(s["client_examples"]) == 32
    again = run_federated(cfg_of(*BASE, "federated.clients=3", "federated.local_steps=2", "federated.alpha=0.5"))
    assert again["client_labels"] == s["client_labels"]
    a, b = _weights(s["model"]), _weights(again["model"])
    assert all(torch.equal(a[k], b[k]) for k in a)  # reproducible
    from forwardonly.models import load_model

    base, _ = load_model(str(tiny_dir))
    ref = dict(base.named_parameters())
    assert any(not torch.equal(p, ref[n]) for n, p in s["model"].named_parameters())  # it trained


def test_mean_aggregation_moves_less_than_sum(cfg_of, tiny_dir):
    from forwardonly.models import load_model

    ref = dict(load_model(str(tiny_dir))[0].named_parameters())
    moved = {}
    for agg in ("mean", "sum"):
        s = run_federated(cfg_of(*BASE, "federated.clients=4", "federated.local_steps=2", "federated.alpha=none",
                                       f"federated.aggregate={agg}"))
        moved[agg] = sum(float((p - ref[n]).norm()) ** 2 for n, p in s["model"].named_parameters()) ** 0.5
    assert 0 < moved["mean"] < 0.5 * moved["sum"]


@pytest.mark.parametrize("extra,msg", [
    (("federated.clients=0",), "federated.clients=0 must be at least 1"),
    (("federated.local_steps=3",), "steps=8 is not a multiple of federated.local_steps=3"),
    (("federated.alpha=0",), "federated.alpha=0.0 must be > 0"),
    (("optim.name=fo-adam",), "optim.name=fo-adam is first-order"),
    (("optim.lr=auto",), "optim.lr=auto"),
    (("federated.clients=8", "federated.alpha=0.05"), "client \\d+ got no training examples"),
])
def test_bad_input_is_one_line(cfg_of, extra, msg):
    with pytest.raises(UserError, match=msg) as e:
        run_federated(cfg_of(*BASE, *extra))
    assert "\n" not in str(e.value)


def test_train_refuses_a_federated_config(cfg_of):
    with pytest.raises(UserError, match="forwardonly federated"):
        run(cfg_of(*BASE, "federated.clients=2"), progress=False)


def test_cli_prints_bytes_and_refuses_bad_values(ov, tmp_path, capsys):
    import json

    from forwardonly.cli.main import main

    out = tmp_path / "fed"
    assert main(["federated", *ov(*BASE, "federated.clients=2", "federated.local_steps=2", f"out_dir={out}")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bytes_per_client_round"] == 24 and summary["clients"] == 2
    before = (out / "summary.json").read_bytes()
    assert main(["federated", *ov(*BASE, "federated.clients=2", f"out_dir={out}")]) == 2  # a finished run: refused
    assert (out / "summary.json").read_bytes() == before
    assert main(["federated", *ov(*BASE, "federated.alpha=-2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "federated.alpha=-2.0 must be > 0" in err[-1]


@pytest.mark.slow
def test_flower_engine_equals_local_bitwise(cfg_of):
    pytest.importorskip("flwr")
    pytest.importorskip("ray")
    common = (*BASE, "federated.clients=3", "federated.local_steps=2")
    local = run_federated(cfg_of(*common))
    flower = run_federated(cfg_of(*common, "federated.engine=flower", "federated.flower_cpus=1"))
    a, b = _weights(local["model"]), _weights(flower["model"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert flower["bytes_sent"] == local["bytes_sent"] == [[24, 24, 24]] * 4
    assert flower["forwards"] == local["forwards"]
    assert flower["bytes_down_per_client_round"] == [0, 88, 176, 264]  # the history: 4 + 3 * (4 + 24) per round
