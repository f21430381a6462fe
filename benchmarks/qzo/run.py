"""QZO benchmark: int4 quantized ZO (scales only) vs bf16 ZO (all weights) on SmolLM2-135M sentiment.

    python benchmarks/qzo/run.py train  --mode bf16 --steps 100        # -> results/train_bf16.<UTC time>.json
    python benchmarks/qzo/run.py train  --mode int4 --steps 100
    python benchmarks/qzo/run.py memory --mode bf16                    # fresh process each
    python benchmarks/qzo/run.py memory --mode int4
    python benchmarks/qzo/run.py memory --mode none                    # libraries only
    python benchmarks/qzo/run.py memory --mode int4 --out benchmarks/qzo/results/v7/memory_int4_r1.json  # a name

Every run writes a new record: ``--out`` must name a file that does not exist (checked before
the run starts), and without it the name carries the UTC time. Records are never overwritten.

Modes:
  fp32  fp32 weights, all parameters trained (reference)
  bf16  bf16 weights (storage), fp32 arithmetic via MixedPrecision, all parameters trained
  bf16-compute  bf16 weights and bf16 arithmetic (plain HF bf16 model; 8x slower than fp32 on this CPU)
  int4  int4 weights (group 64, tied embedding/lm_head quantized too), fp32 arithmetic,
        only the log-scales trained (QZO)
  int8  as int4 with 8-bit codes
  int4-q41  block linears in the shipped GGUF's Q4_1 layout (group 32, float minimum: exact), the tied
        embedding/head int4 group 64 as in int4; only the log-scales trained
  int4-q41-emb8  the same with the embedding/head int8 symmetric group 32 (the GGUF's Q8_0: exact)
  int4-q41-fmin  the same with the embedding/head int4 group 64 with float minimums (w = q * s + m, fp16 m)
  int4-bf16  a diagnostic: the int4 model's weights dequantized into a bf16 model, trained as bf16 (all weights)
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULTS = {  # mode -> optimizer settings (chosen before the runs; see README)
    "fp32": dict(lr=1e-4, eps=1e-3),
    "bf16": dict(lr=1e-4, eps=1e-3),
    "bf16-compute": dict(lr=1e-4, eps=1e-3),
    "int4-bf16": dict(lr=1e-5, eps=1e-3),
    "int4-q41": dict(lr=5e-3, eps=1e-3, clip=10.0),
    "int4-q41-emb8": dict(lr=5e-3, eps=1e-3, clip=10.0),
    "int4-q41-fmin": dict(lr=5e-3, eps=1e-3, clip=10.0),
    "int4": dict(lr=5e-3, eps=1e-3, clip=10.0),
    "int8": dict(lr=5e-3, eps=1e-3, clip=10.0),
}


QUANT_MODES = ("int4", "int8", "int4-q41", "int4-q41-emb8", "int4-q41-fmin")


def trim():
    """Give freed heap back to the OS so RSS reflects live memory (same treatment in every mode)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def fix_mmap_threshold(nbytes: int) -> bool:
    """Hold glibc's mmap threshold at ``nbytes`` (``mallopt(M_MMAP_THRESHOLD)``, like ``MALLOC_MMAP_THRESHOLD_``).

    By default glibc raises the threshold each time a large mmapped block is freed (up to 32 MB), after
    which every activation-sized tensor comes from the heap, and freed heap is kept, fragmented, until
    ``malloc_trim``: tens of MB of slack at the peak. A fixed threshold keeps blocks above it in their own
    mappings, returned to the OS on free. Returns False where the call is unavailable (not glibc).
    """
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(nbytes)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def prepare(mode: str, load: str = "streamed", group_size: int = 64, chunk_rows: int = 1024, mlp_chunk: int = 0,
            offsets: bool = False):
    """(model, tokenizer, trainable params, context manager) for a mode.

    ``load`` (int4/int8 only): ``streamed`` reads the fp32 checkpoint straight into quantized layers
    (``load_pretrained_quantized``, no fp32 model built); ``fp32`` loads the fp32 model and quantizes it
    (the path of the first results; bitwise the same model). ``mlp_chunk`` > 0 runs every feed-forward block
    on at most that many tokens at a time under ``no_grad`` (:func:`forwardonly.models.chunking.chunk_feedforward`,
    any mode).
    """
    model, tok, params, ctx = _prepare(mode, load, group_size, chunk_rows, offsets)
    if mlp_chunk:
        from forwardonly.models.chunking import chunk_feedforward

        chunk_feedforward(model, tokens=mlp_chunk)
    return model, tok, params, ctx


def _prepare(mode, load, group_size, chunk_rows, offsets=False):
    from contextlib import nullcontext

    from forwardonly.models import load_model
    from forwardonly.quant import load_pretrained_quantized, quantize_model, scale_parameters
    from forwardonly.quant.mixed import MixedPrecision

    if mode == "int4-bf16":  # a diagnostic: the int4 model's weights, dequantized, trained like bf16 (all weights)
        model, tok = load_model("smollm2-135m", dtype=torch.float32)
        dense = {}
        for name, m in model.named_modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) and id(m.weight) not in dense:
                dense[id(m.weight)] = m.weight
        with torch.no_grad():
            from forwardonly.quant import dequantize, quantize

            for w in dense.values():  # the same codes and scales as quantize_model's (round to nearest, group 64)
                q, sc, z = quantize(w, 4, group_size)
                w.copy_(dequantize(q, sc, z, 4))
        model = model.to(torch.bfloat16)
        return model, tok, [p for p in model.parameters()], MixedPrecision(model, compute=torch.float32)
    if mode in ("bf16", "bf16-compute"):
        model, tok = load_model("smollm2-135m", dtype=torch.bfloat16)
        ctx = MixedPrecision(model, compute=torch.float32) if mode == "bf16" else nullcontext()
        return model, tok, [p for p in model.parameters()], ctx
    if mode in ("int4-q41", "int4-q41-emb8", "int4-q41-fmin"):
        # the shipped GGUF's own layout: every block linear in Q4_1 (group 32, a scale and a float minimum per
        # group), so its codes reproduce the checkpoint exactly; the tied embedding/head in int8 symmetric group
        # 32 (the GGUF's Q8_0, also exact) or, to save memory, int4 group 64 like the int4 mode (lossy)
        # the minimums stay frozen unless --offset-lr trains them: then fp32, else fp16 (Q4_1's own, exact);
        # one QuantConfig with embedding settings of their own (bitwise the model of quantizing in two passes)
        mins = "float32" if offsets else "float16"
        emb = {"int4-q41-emb8": dict(bits=8, group_size=32, symmetric=True),
               "int4-q41-fmin": dict(bits=4, group_size=group_size, float_min=True, offsets_dtype=mins),
               "int4-q41": dict(bits=4, group_size=group_size, float_min=False, offsets=offsets)}[mode]
        model, tok = load_pretrained_quantized("smollm2-135m", bits=4, group_size=32, float_min=True,
                                               offsets_dtype=mins, chunk_rows=chunk_rows, embedding=emb)
        for p in model.parameters():
            p.requires_grad_(False)
        params = scale_parameters(model)
        for p in params:
            p.requires_grad_(True)
        trim()
        return model, tok, params, nullcontext()
    bits = 4 if mode == "int4" else 8
    if offsets and (mode == "fp32" or load != "streamed"):
        raise SystemExit("--offsets needs --mode int4/int8 with --load streamed")
    if mode != "fp32" and load == "streamed":
        model, tok = load_pretrained_quantized("smollm2-135m", bits=bits, group_size=group_size,
                                               chunk_rows=chunk_rows, offsets=offsets)
    else:
        model, tok = load_model("smollm2-135m")
        if mode == "fp32":
            return model, tok, [p for p in model.parameters()], nullcontext()
        quantize_model(model, bits=bits, group_size=group_size, chunk_rows=chunk_rows)
    for p in model.parameters():
        p.requires_grad_(False)
    params = scale_parameters(model)
    for p in params:
        p.requires_grad_(True)
    trim()
    return model, tok, params, nullcontext()


class LabelDelta(torch.nn.Module):
    """The output layer plus a zero-initialised fp32 delta on the label words' rows:
    ``logits[..., ids] += h @ delta.T`` (``n_labels x hidden`` floats: 1,152 for SmolLM2's two labels,
    4.5 kB). An unquantized parameter of its own (``lm_head.delta``) that ZO trains beside the scales."""

    def __init__(self, head: torch.nn.Module, ids: torch.Tensor):
        super().__init__()
        self.head = head
        self.register_buffer("ids", ids.clone(), persistent=False)
        self.delta = torch.nn.Parameter(torch.zeros(len(ids), head.in_features), requires_grad=False)

    def forward(self, h):
        out = self.head(h)
        return out.index_add(-1, self.ids, (h.to(self.delta.dtype) @ self.delta.t()).to(out.dtype))


def make_run(args):
    from forwardonly.optim import ZOSGD, ZOSGDBlock
    from forwardonly.tasks import get_task, make_objective

    torch.manual_seed(0)
    task = get_task("sentiment")
    model, tok, params, ctx = prepare(args.mode, args.load, args.group_size, args.chunk_rows, args.mlp_chunk,
                                      offsets=args.offset_lr > 0)
    obj = make_objective(task, tok, "ce")
    groups = [{"params": params}]
    if args.offset_lr:  # a trainable fp32 offset per group (QuantConfig(offsets=True)), at its own rate
        from forwardonly.quant import offset_parameters

        offsets = offset_parameters(model)
        for p in offsets:
            p.requires_grad_(True)  # _prepare froze every parameter but the scales
        groups.append({"params": offsets, "lr": args.offset_lr})
    if args.norm_lr:  # QZO's option: the parameters left in floating point (norms, biases) trained too
        if args.mode not in QUANT_MODES:
            raise SystemExit("--norm-lr applies to int4/int8 (other modes train every parameter already)")
        ids = {id(p) for p in params}
        others = [p for p in model.parameters() if id(p) not in ids and p.is_floating_point()]
        for p in others:
            p.requires_grad_(True)
        groups.append({"params": others, "lr": args.norm_lr})
    if args.head_bias:  # a zero-initialised logit bias on the output layer: an unquantized parameter of its own
        if args.mode not in QUANT_MODES:
            raise SystemExit("--head-bias applies to int4/int8")
        head = model.get_output_embeddings()
        if head.bias is not None:
            raise SystemExit(f"{type(head).__name__} already has a bias")
        head.bias = torch.nn.Parameter(torch.zeros(head.out_features), requires_grad=False)
    if args.label_delta:  # an fp32 delta on the label words' output rows (train it with --group-lr 'lm_head.delta=LR')
        if args.mode not in QUANT_MODES:
            raise SystemExit("--label-delta applies to int4/int8")
        model.lm_head = LabelDelta(model.get_output_embeddings(), obj.label_ids)
    if args.lora:  # fp32 low-rank adapters on the quantized layers (forwardonly.quant.add_lora), lr --lora-lr
        if args.mode not in QUANT_MODES:
            raise SystemExit("--lora applies to int4/int8")
        from forwardonly.quant.lora import add_lora

        groups.append({"params": add_lora(model, r=args.lora, alpha=2.0 * args.lora,
                                          targets=args.lora_targets.split(",")), "lr": args.lora_lr})
    if args.group_lr:
        groups = _split_groups(model, groups, args.group_lr)
    if args.freeze:
        groups = _freeze(model, groups, args.freeze)
    if args.only_extra:  # train only what --norm-lr / --group-lr added: the mode's own set (scales, all weights) frozen
        if not (args.norm_lr or args.group_lr or args.lora or args.offset_lr):
            raise SystemExit("--only-extra needs --norm-lr, --group-lr, --lora or --offset-lr (otherwise nothing is trained)")
        base = {id(p) for p in params}
        groups = [g for g in groups if not any(id(p) in base for p in g["params"])]
        if not groups:
            raise SystemExit("--only-extra: every group is the mode's own set; nothing left to train")
        for p in params:
            if not any(p is q for g in groups for q in g["params"]):
                p.requires_grad_(False)
    # block: ZO-SGD on one parameter group per step, in turn (ZOSGDBlock), so that a group with large
    # gradients (the norms) does not swamp the projected gradient of another (the scales)
    if args.offset_lr and args.mode not in QUANT_MODES:
        raise SystemExit("--offset-lr applies to int4/int8")
    cls = ZOSGDBlock if args.optimizer == "block" else ZOSGD
    opt = cls(groups, seed=args.seed, **{**DEFAULTS[args.mode], **json.loads(args.opt)})
    train = task.splits["train"]
    g = torch.Generator().manual_seed(args.seed)

    def batches():
        while True:
            for i in torch.randperm(len(train), generator=g).tolist():
                yield train[i]

    it = batches()
    return task, model, tok, obj, opt, ctx, it


def _freeze(model, groups: list[dict], patterns: list[str]) -> list[dict]:
    """Leave the parameters whose names match a pattern (fnmatch) out of training and of the perturbations."""
    import fnmatch

    named = dict(model.named_parameters(remove_duplicate=False))
    frozen = {id(p) for name, p in named.items() if any(fnmatch.fnmatchcase(name, pat) for pat in patterns)}
    if not frozen:
        raise SystemExit(f"--freeze {patterns}: no parameter matches")
    for p in named.values():
        if id(p) in frozen:
            p.requires_grad_(False)
    groups = [{**g, "params": [p for p in g["params"] if id(p) not in frozen]} for g in groups]
    return [g for g in groups if g["params"]]


def _split_groups(model, groups: list[dict], specs: list[str]) -> list[dict]:
    """``NAME_PATTERN=LR`` (fnmatch on parameter names): matching parameters move to a group of their own
    with that learning rate; a floating-point parameter not trained before (a norm) is trained from then on.
    A pattern that matches nothing is an error."""
    import fnmatch

    named = {}
    for name, p in model.named_parameters(remove_duplicate=True):
        named.setdefault(id(p), (name, p))
    taken: set[int] = set()
    extra = []
    for spec in specs:
        pattern, sep, lr = spec.rpartition("=")
        if not sep or not pattern:
            raise SystemExit(f"--group-lr {spec!r}: expected NAME_PATTERN=LR")
        try:
            lr_value = float(lr)
        except ValueError:
            raise SystemExit(f"--group-lr {spec!r}: learning rate {lr!r} is not a number") from None
        ps = [p for pid, (name, p) in named.items()
              if fnmatch.fnmatchcase(name, pattern) and pid not in taken and p.is_floating_point()]
        if not ps:
            raise SystemExit(f"--group-lr {spec!r}: no (untaken) floating-point parameter matches {pattern!r}")
        for p in ps:
            taken.add(id(p))
            p.requires_grad_(True)
        extra.append({"params": ps, "lr": lr_value})
    kept = []
    for g in groups:
        rest = [p for p in g["params"] if id(p) not in taken]
        if rest:
            kept.append({**g, "params": rest})
    return kept + extra


def cmd_train(args):
    from forwardonly.bench.record import make_record, write_record
    from forwardonly.tasks import evaluate

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    task, model, tok, obj, opt, ctx, it = make_run(args)
    log = []
    with ctx:
        t0 = time.perf_counter()
        acc0 = evaluate(model, tok, task, "test", max_examples=args.test, progress=False)["accuracy"]
        t_eval0 = time.perf_counter() - t0
        print(f"[{args.mode}] before: acc={acc0:.4f} ({t_eval0:.0f}s)", flush=True)
        # validation accuracy (for choosing settings without looking at test): before and after
        val0 = (evaluate(model, tok, task, "validation", max_examples=args.val, progress=False)["accuracy"]
                if args.val else None)
        t0 = time.perf_counter()
        for step in range(args.steps):
            if args.deadline and time.time() > args.deadline:
                print(f"[{args.mode}] deadline reached after {step} steps", flush=True)
                break
            batch = obj.batch([next(it) for _ in range(args.batch)], "cpu")
            loss = opt.step(lambda: obj.loss(model, batch))
            log.append({"step": step, "loss": float(loss), "g": opt.zo_state["last_grads"]})
            if step % 10 == 0 or step == args.steps - 1:
                print(f"[{args.mode}] step {step} loss {float(loss):.4f} g {opt.zo_state['last_grads']} "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
        t_train = time.perf_counter() - t0
        steps_run = len(log)
        t0 = time.perf_counter()
        acc1 = evaluate(model, tok, task, "test", max_examples=args.test, progress=False)["accuracy"]
        t_eval1 = time.perf_counter() - t0
        val1 = (evaluate(model, tok, task, "validation", max_examples=args.val, progress=False)["accuracy"]
                if args.val else None)
    print(f"[{args.mode}] after: acc={acc1:.4f} val {val0} -> {val1}", flush=True)
    config = {"mode": args.mode, "load": args.load if args.mode in QUANT_MODES else None,
              "steps": args.steps, "batch": args.batch, "seed": args.seed,
              "test": args.test, "val": args.val, "group_size": args.group_size, "chunk_rows": args.chunk_rows,
              "mlp_chunk": args.mlp_chunk,
              "threads": args.threads, "optimizer": "ZOSGDBlock" if args.optimizer == "block" else "ZOSGD", "opt": {**DEFAULTS[args.mode], **json.loads(args.opt)},
              "norm_lr": args.norm_lr, "group_lr": args.group_lr, "only_extra": args.only_extra, "offset_lr": args.offset_lr, "freeze": args.freeze,
              "lora": args.lora, "lora_targets": args.lora_targets if args.lora else None, "lora_lr": args.lora_lr if args.lora else None, "head_bias": args.head_bias, "label_delta": args.label_delta,
              "trainable": sum(p.numel() for g in opt.param_groups for p in g["params"])}
    results = {"acc_before": acc0, "acc_after": acc1, "val_before": val0, "val_after": val1, "steps_run": steps_run, "train_s": t_train,
               "s_per_step": t_train / max(steps_run, 1),
               "eval_s": [t_eval0, t_eval1], "total_s": time.perf_counter() - t_start, "log": log}
    write_record(args.out, make_record(f"qzo-train-{args.mode}", config, results))  # exclusive: never overwrites


def cmd_memory(args):
    """Peak memory of ZO steps; the baseline holds everything but the model (libraries, tokenizer, batch)."""
    from transformers import AutoTokenizer

    from forwardonly.bench.measure import PeakMemory, anon_bytes, rss_bytes
    from forwardonly.bench.record import make_record, write_record
    from forwardonly.models.loading import prepare_tokenizer, resolve
    from forwardonly.quant import quantized_bytes
    from forwardonly.tasks import get_task, make_objective

    torch.set_num_threads(args.threads)
    if args.hold_bytes is not None:  # a diagnostic: the cap on one step's held random words (ZOSGD's hold)
        from forwardonly.optim.perturb import directions as _perturb

        _perturb.HOLD_BYTES = args.hold_bytes
    if args.mmap_threshold and not fix_mmap_threshold(args.mmap_threshold):
        raise SystemExit("mallopt(M_MMAP_THRESHOLD) is not available here")
    task = get_task("sentiment")
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(str(resolve("smollm2-135m")[0])))
    examples = task.splits["train"][: args.batch]
    # --micro M: the batch's loss computed over micro-batches of M examples (the same mean loss, activations
    # of M examples at a time); 0 = the whole batch in one forward
    m = args.micro or args.batch
    batches = [make_objective(task, tok, "ce").batch(examples[i : i + m], "cpu") for i in range(0, len(examples), m)]
    trim()
    base = {"rss": rss_bytes(), "anon": anon_bytes()}
    results = {"baseline": base}
    # The architecture's modeling code (transformers imports ~50 MB of modules for it) is library code
    # too: a second baseline holds it as well, by building the model on the meta device (no tensors).
    # Every mode needs that import anyway, so the measurements below are the same either way.
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(resolve("smollm2-135m")[0])))
    trim()
    results["baseline_with_model_code"] = {"rss": rss_bytes(), "anon": anon_bytes()}
    if args.mode != "none":
        from forwardonly.optim import ZOSGD

        with PeakMemory(interval=0.001) as load_mem:
            model, tok2, params, ctx = prepare(args.mode, args.load, args.group_size, args.chunk_rows, args.mlp_chunk,
                                               offsets=args.offset_lr > 0)
        results["load"] = load_mem.result()
        del tok2  # the baseline already holds a tokenizer; count the model alone
        obj = make_objective(task, tok, "ce")
        groups = [{"params": params}]
        if args.offset_lr:  # the offsets trained too (--only-extra: they alone), as in the training runs
            from forwardonly.quant import offset_parameters

            offsets = offset_parameters(model)
            for p in offsets:
                p.requires_grad_(True)
            groups = ([] if args.only_extra else groups) + [{"params": offsets, "lr": args.offset_lr}]
        if args.freeze:
            groups = _freeze(model, groups, args.freeze)
        opt = ZOSGD(groups, seed=args.seed, **{**DEFAULTS[args.mode], **json.loads(args.opt)})
        trim()
        results["model_bytes"] = quantized_bytes(model)
        results["loaded"] = {"rss": rss_bytes(), "anon": anon_bytes()}
        with ctx, PeakMemory(interval=0.001) as mem:
            for _ in range(args.steps):
                opt.step(lambda: sum(obj.loss(model, b) * len(b) for b in batches) / len(examples))
        results["zo_steps"] = mem.result()
        results["peak_anon_above_baseline"] = mem.peak_anon - base["anon"]
        results["peak_rss_above_baseline"] = mem.peak_rss - base["rss"]
        lib = results["baseline_with_model_code"]
        results["peak_anon_above_library_baseline"] = mem.peak_anon - lib["anon"]
        results["peak_rss_above_library_baseline"] = mem.peak_rss - lib["rss"]
    print(json.dumps(results, indent=1))
    config = {"mode": args.mode, "steps": args.steps, "batch": args.batch, "threads": args.threads,
              "mmap_threshold": args.mmap_threshold or "glibc default (dynamic)",
              "load": args.load if args.mode in QUANT_MODES else "fp32" if args.mode == "fp32" else "bf16",
              "group_size": args.group_size, "chunk_rows": args.chunk_rows, "mlp_chunk": args.mlp_chunk,
              "micro": args.micro or args.batch, "offset_lr": args.offset_lr, "hold_bytes": args.hold_bytes, "freeze": args.freeze, "only_extra": args.only_extra,
              "opt": {**DEFAULTS[args.mode], **json.loads(args.opt)}}
    write_record(args.out, make_record(f"qzo-memory-{args.mode}", config, results))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["train", "memory"])
    ap.add_argument("--mode", choices=["fp32", "bf16", "bf16-compute", "int4-bf16", "int4", "int4-q41", "int4-q41-emb8", "int4-q41-fmin", "int8", "none"], required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--val", type=int, default=0, help="validation examples scored before/after (default 0: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mmap-threshold", type=int, default=0,
                    help="memory: hold glibc's mmap threshold at this many bytes (0: glibc's dynamic default)")
    ap.add_argument("--load", choices=["streamed", "fp32"], default="streamed",
                    help="int4/int8: read the checkpoint straight into quantized layers, or load fp32 and quantize")
    ap.add_argument("--group-size", type=int, default=64, help="int4/int8: input features per scale (default 64)")
    ap.add_argument("--chunk-rows", type=int, default=1024,
                    help="int4/int8: weight rows dequantized at a time (default 1024)")
    ap.add_argument("--mlp-chunk", type=int, default=0,
                    help="tokens per feed-forward chunk under no_grad, any mode (default 0: whole batch)")
    ap.add_argument("--norm-lr", type=float, default=0.0,
                    help="train: int4/int8 also train the floating-point parameters (norms) at this lr (default 0: scales only)")
    ap.add_argument("--optimizer", choices=["zosgd", "block"], default="zosgd",
                    help="train: zosgd perturbs every trained parameter each step; block perturbs one parameter "
                         "group per step in turn (scales, then --norm-lr/--group-lr groups)")
    ap.add_argument("--head-bias", action="store_true",
                    help="train, int4/int8: add a zero-initialised fp32 bias to the output layer (train it with "
                         "--group-lr 'lm_head.bias=LR')")
    ap.add_argument("--label-delta", action="store_true",
                    help="int4/int8: add a zero-initialised fp32 delta on the label words' output rows "
                         "(parameter lm_head.delta; give it a rate with --group-lr 'lm_head.delta=LR')")
    ap.add_argument("--group-lr", action="append", default=[], metavar="NAME_PATTERN=LR",
                    help="train: parameters whose name matches (fnmatch) get this lr in a group of their own; "
                         "repeatable (e.g. 'model.embed_tokens.scales=3e-3', 'model.norm.weight=1e-4')")
    ap.add_argument("--freeze", action="append", default=[], metavar="NAME_PATTERN",
                    help="leave the matching parameters (fnmatch on names) out of training, e.g. 'model.embed_tokens.*'")
    ap.add_argument("--hold-bytes", type=int, default=None,
                    help="memory: cap on a step's held random words (default: the library's, 64 MiB; 0 holds none)")
    ap.add_argument("--offset-lr", type=float, default=0.0,
                    help="int4/int8: train a zero-initialised fp32 offset per group at this rate (0: no offsets)")
    ap.add_argument("--lora", type=int, default=0, help="int4/int8: rank of fp32 LoRA adapters (alpha = 2 x rank)")
    ap.add_argument("--lora-targets", default="q_proj,v_proj", help="layer names the adapters wrap (default q_proj,v_proj)")
    ap.add_argument("--lora-lr", type=float, default=1e-4, help="learning rate of the adapters")
    ap.add_argument("--only-extra", action="store_true",
                    help="train only the groups --norm-lr/--group-lr add (int4: scales frozen; bf16: the other weights frozen)")
    ap.add_argument("--micro", type=int, default=0,
                    help="memory: examples per forward, the batch's loss summed over micro-batches (default: all)")
    ap.add_argument("--opt", default="{}", help="JSON overrides of the optimizer settings")
    ap.add_argument("--deadline", type=float, default=0.0, help="unix time after which training stops early")
    ap.add_argument("--out", help="result record, which must not exist (default: a new "
                                   "results/COMMAND_MODE.<UTC time>.json)")
    args = ap.parse_args()
    from forwardonly.bench.record import new_record_path, refuse_existing

    refuse_existing(args.out)  # before the run: records are never overwritten
    args.out = args.out or new_record_path(HERE / "results", f"{args.command}_{args.mode}")
    {"train": cmd_train, "memory": cmd_memory}[args.command](args)


if __name__ == "__main__":
    from forwardonly.errors import script_main

    sys.exit(script_main(main))
