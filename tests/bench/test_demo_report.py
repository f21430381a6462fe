"""The demo's report: what it reads off a ``probe_layers`` record."""


def test_probe_layers_keeps_the_best_l2_per_layer_on_the_full_training_set(benchmark_script):
    report = benchmark_script("demo/report.py")
    rows = [{"feature": "last", "layer": 1, "k": "all", "seed": 0, "l2": 1.0, "validation": 0.80},
            {"feature": "last", "layer": 1, "k": "all", "seed": 0, "l2": 10.0, "validation": 0.85},
            {"feature": "last", "layer": 1, "k": 16, "seed": 0, "l2": 10.0, "validation": 0.99},  # few-shot: not read
            {"feature": "last", "layer": 0, "k": "all", "seed": 0, "l2": 1.0, "validation": 0.55},
            {"feature": "mean", "layer": 0, "k": "all", "seed": 0, "l2": 100.0, "validation": 0.78}]
    got = report.probe_layers({"results": {"rows": rows}})
    assert got == {"last": [(0, 0.55, 1.0), (1, 0.85, 10.0)], "mean": [(0, 0.78, 100.0)]}
