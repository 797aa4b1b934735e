#!/usr/bin/env python3
"""PyTorch eager baseline for `ember bench`: the same model, dtype, shapes and timing rules
through Hugging Face `transformers`, printed as one JSON line in the bench's run format.

Usage: bench_pytorch.py SPEC.json   (written by `ember bench`; see RunSpec in job.rs)
Exit status 3 means "cannot run here" (torch, transformers or gguf missing, no such
device): the bench shows a skipped row with the last stderr line as the reason.

Timing follows Ember's: pp = one forward over n random prompt tokens (only the last
position's logits), up to the chosen token on the host; tg = n single-token steps with a KV
cache, greedy, each token read back to the host (as a generate loop does).
"""
import json
import resource
import sys
import time


def unavailable(message):
    print(message, file=sys.stderr)
    sys.exit(3)


def main():
    spec = json.load(open(sys.argv[1]))
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        unavailable(f"PyTorch baseline needs torch and transformers: {e}")

    device = spec["device"]
    if device.startswith("cuda") and not torch.cuda.is_available():
        unavailable("torch sees no CUDA device")
    if device == "mps" and not torch.backends.mps.is_available():
        unavailable("torch sees no MPS device")
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}.get(spec["dtype"])
    if dtype is None:
        unavailable(f"dtype {spec['dtype']} is not one of f32, f16, bf16")

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elif device == "mps":
            torch.mps.synchronize()

    model_spec = spec["model"]
    torch.manual_seed(0)
    start = time.perf_counter()
    if "preset" in model_spec:
        c = dict(model_spec["config"])
        c = {k: v for k, v in c.items() if v is not None}
        config = LlamaConfig(**c)
        with torch.device(device):
            model = LlamaForCausalLM(config).to(dtype)
        name = model_spec["preset"]
    elif "gguf" in model_spec:
        try:
            import gguf  # noqa: F401  (transformers needs it to read GGUF)
        except ImportError:
            unavailable("PyTorch baseline on a GGUF file needs the gguf package")
        import os
        path = model_spec["gguf"]
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path), torch_dtype=dtype
        ).to(device)
        name = os.path.basename(path)
    else:
        import os
        model = AutoModelForCausalLM.from_pretrained(model_spec["dir"], torch_dtype=dtype).to(device)
        name = os.path.basename(model_spec["dir"].rstrip("/"))
    model.eval()
    sync()
    load_s = time.perf_counter() - start
    vocab = model.config.vocab_size
    params = sum(p.numel() for p in model.parameters())
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    gen = torch.Generator().manual_seed(0x5EED)
    tests = []
    reps = spec["warmup"] + spec["repetitions"]
    with torch.inference_mode():
        for n in spec["n_prompt"]:
            ids = torch.randint(0, vocab, (1, n), generator=gen).to(device)
            samples, warmups = [], []
            for rep in range(reps):
                sync()
                t0 = time.perf_counter()
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
                int(out.logits[0, -1].argmax())
                (samples if rep >= spec["warmup"] else warmups).append(
                    int((time.perf_counter() - t0) * 1e9))
                del out
            tests.append({"n_prompt": n, "n_gen": 0, "samples_ns": samples, "warmup_ns": warmups})
        for n in spec["n_gen"]:
            first = torch.randint(0, vocab, (1, 1), generator=gen).to(device)
            samples, warmups = [], []
            for rep in range(reps):
                sync()
                t0 = time.perf_counter()
                cache = transformers.DynamicCache()
                token = first
                for _ in range(n):
                    out = model(input_ids=token, past_key_values=cache, use_cache=True)
                    cache = out.past_key_values
                    token = torch.tensor([[int(out.logits[0, -1].argmax())]], device=device)
                (samples if rep >= spec["warmup"] else warmups).append(
                    int((time.perf_counter() - t0) * 1e9))
            tests.append({"n_prompt": 0, "n_gen": n, "samples_ns": samples, "warmup_ns": warmups})

        perplexity = None
        ids = spec.get("accuracy_ids") or []
        if len(ids) > 1:
            inputs = torch.tensor([ids[:-1]], device=device)
            logits = model(input_ids=inputs).logits[0].float()
            targets = torch.tensor(ids[1:], device=device)
            nll = torch.nn.functional.cross_entropy(logits, targets)
            perplexity = float(torch.exp(nll))
            logits.cpu().numpy().astype("<f4").tofile(spec["logits_path"])

    if device.startswith("cuda"):
        peak, kind = int(torch.cuda.max_memory_allocated()), "torch CUDA allocator peak"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process RSS"
    print(json.dumps({
        "backend": f"torch {torch.__version__} eager ({model.config._attn_implementation})",
        "device": device if not device.startswith("cuda") else torch.cuda.get_device_name(),
        "dtype": spec["dtype"],
        "model_filename": name,
        "model_type": f"llama {params / 1e6:.0f}M {spec['dtype'].upper()}",
        "model_size": size,
        "model_n_params": params,
        "load_s_cold": load_s,
        "load_s_warm": None,
        "tests": tests,
        "peak_mem": peak,
        "peak_mem_kind": kind,
        "accuracy_ids": [],
        "perplexity": perplexity,
        "vocab": vocab,
        "reference_match": None,
    }))


if __name__ == "__main__":
    main()
