"""Seconds per RL step and its split (generate / log-probs / train), tokens/s, peak RSS, and matmul FLOP
utilization against this machine's measured fp32 matmul peak.

    .venv/bin/python benchmarks/bench_train.py [--steps 6] [--model embedded:tiny] [--set key=value ...]

The FLOP count is the usual dense-transformer estimate of the work actually executed: 2 x (matmul parameters)
per token for a forward pass and 3x that for forward + backward; the LM head counts as a matmul, embedding
look-ups do not; attention-score FLOPs are added per layer (2 x 2 x L x hidden per token, causal half ignored).
Token counts follow the trainer: padded widths (prompts padded to the longest in the batch, completions to the
longest completion); with the shared prompt pass (the default) each prompt is run once per group, in generation
(prefill) as in the log-prob and training passes. The first step is reported separately (warm-up) and left out.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch


def matmul_peak_gflops(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def matmul_params(model) -> tuple[int, int, int]:
    """(parameters used in matmuls per token, hidden size, layers)."""
    cfg = model.config
    total = 0
    for name, p in model.named_parameters():
        if p.dim() == 2 and "embed_tokens" not in name:
            total += p.numel()
    if getattr(cfg, "tie_word_embeddings", False):
        total += model.get_input_embeddings().weight.numel()  # the tied LM head is a matmul too
    return total, cfg.hidden_size, cfg.num_hidden_layers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--model", default="embedded:tiny")
    parser.add_argument("--config", default=None, help="YAML config (default: the embedded defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from softgate.config import load_config
    from softgate.rundir import read_jsonl
    from softgate.modeling import load_model_and_tokenizer
    from softgate.train import train

    peak = matmul_peak_gflops()
    out = Path(tempfile.mkdtemp(prefix="bench_train_"))
    cfg = load_config(args.config, [f"model.name_or_path={args.model}", f"steps={args.steps}", "eval.size=0",
                                    "log.save_every=0", "log.progress=false", f"output_dir={out / 'run'}",
                                    *args.overrides])
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    metrics = read_jsonl(out / "run" / "metrics.jsonl")
    per_step = {}
    for m in metrics:
        per_step.setdefault(m["rl_step"], m)
    steps = [per_step[k] for k in sorted(per_step)]
    warm, rest = steps[0], steps[1:] or steps

    model, tokenizer = load_model_and_tokenizer(args.model)
    n_mm, hidden, layers = matmul_params(model)
    prompt_len = 0.0
    G, P = cfg.rollout.num_generations, cfg.rollout.prompts_per_step
    from softgate.data import load_examples, load_task

    task = load_task(cfg.task)
    texts = [task.render_prompt(e, tokenizer) for e in load_examples(task, cfg.task, "train")[: 16 * P]]
    lengths = [len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    prompt_len = sum(max(lengths[i:i + P]) for i in range(0, len(lengths), P)) / (len(lengths) // P)
    updates = cfg.algo.num_iterations  # each pass touches every sequence once (split over minibatches)
    shared = cfg.model.shared_prompt_pass

    def flops(step: dict) -> float:
        n_seq = G * P
        T = step["response/length_max"]  # completions are padded to the longest one
        seq_len = prompt_len + T
        per_token_fwd = 2 * n_mm + 4 * seq_len * hidden * layers  # matmuls + attention scores (QK^T, AV)
        prompt_tokens = (P if shared else n_seq) * prompt_len
        gen = prompt_tokens * per_token_fwd + n_seq * step["response/length_mean"] * per_token_fwd
        one_pass = (prompt_tokens + n_seq * T) * per_token_fwd
        return gen + one_pass + updates * 3 * one_pass  # generate, old log-probs, training passes

    def mean(key):
        return sum(s[key] for s in rest) / len(rest)

    step_s = mean("time/step")
    achieved = sum(flops(s) for s in rest) / sum(s["time/step"] for s in rest) / 1e9
    report = {
        "model": args.model, "matmul_params": n_mm, "prompts_per_step": P, "G": G,
        "steps_measured": len(rest), "seconds_per_step": step_s,
        "generate_s": mean("time/generate"), "logprobs_s": mean("time/logprobs"), "train_s": mean("time/train"),
        "first_step_s": warm["time/step"], "tokens_per_s": mean("perf/tokens_per_s"),
        "completion_len": mean("response/length_mean"), "peak_rss_mb": rss_mb,
        "achieved_gflops": achieved, "matmul_peak_gflops": peak, "utilization": achieved / peak,
        "torch_threads": torch.get_num_threads(), "wall_s": wall,
    }
    print(f"bench_train: {args.model}, {P} prompts x G={G} per step, {len(rest)} steps measured "
          f"(first step {warm['time/step']:.2f} s left out)")
    print(f"  seconds per RL step   {step_s:8.2f}")
    for part in ("generate", "logprobs", "train"):
        print(f"    {part:<18}{report[part + '_s']:8.2f}  ({100 * report[part + '_s'] / step_s:4.1f}%)")
    print(f"  generated tokens/s    {report['tokens_per_s']:8.1f}   (mean completion {report['completion_len']:.1f} tokens)")
    print(f"  peak RSS              {rss_mb:8.0f} MB")
    print(f"  padded prompt width   {prompt_len:8.1f} tokens")
    print(f"  matmul FLOP/s         {achieved:8.2f} GFLOP/s of a measured {peak:.1f} GFLOP/s fp32 peak "
          f"= {100 * report['utilization']:.2f}% utilization")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
