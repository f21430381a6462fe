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


def test_a_recipe_names_its_fitted_head_and_where_it_reads(benchmark_script):
    report = benchmark_script("demo/report.py")
    cfg = {"optim": {"name": "zo-sgd", "options": {"lr": 1e-5, "eps": 1e-3, "q": 1}},
           "scheme": {"name": "bitfit", "norm": True}, "steps": 0, "batch_size": 16,
           "model": {"head_init": "linear_probe", "layers": 28, "head_l2": 100.0}}
    assert report.recipe({"config": cfg}) == ("linear-probe head on block 28 (l2 100), then zo-sgd (lr 1e-05, "
                                              "eps 0.001, q 1) on bitfit norm, 0 steps x 16")
    cfg["model"] = {"head_init": "random", "layers": 0}
    assert report.recipe({"config": cfg}).startswith("zo-sgd (lr 1e-05")
