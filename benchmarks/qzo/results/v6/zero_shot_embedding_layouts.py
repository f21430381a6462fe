import sys, time, json, torch
torch.set_num_threads(1)
from forwardonly.quant import load_pretrained_quantized, quantize_model
from forwardonly.tasks import get_task, evaluate
task = get_task("sentiment")
out = {}
for name, emb in [("g32_fmin", dict(bits=4, group_size=32, float_min=True)),
                  ("g64_fmin", dict(bits=4, group_size=64, float_min=True)),
                  ("g32_asym", dict(bits=4, group_size=32))]:
    t = time.time()
    model, tok = load_pretrained_quantized("smollm2-135m", bits=4, group_size=32, float_min=True, embeddings=False,
                                           offsets_dtype="float16")
    quantize_model(model, **emb)
    acc = evaluate(model, tok, task, "test", max_examples=400, progress=False)["accuracy"]
    val = evaluate(model, tok, task, "validation", max_examples=200, progress=False)["accuracy"]
    out[name] = (acc, val); print(name, acc, val, round(time.time() - t), flush=True)
json.dump(out, open("/tmp/zs/zs.json", "w"))
