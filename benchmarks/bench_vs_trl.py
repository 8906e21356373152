"""softgate's trainer vs TRL's GRPOTrainer (loss_type="sapo"), side by side in one run: seconds per RL step and
peak RSS, printed as ratios.

    .venv/bin/python benchmarks/bench_vs_trl.py [--steps 4] [--rounds 2] [--model embedded:tiny] [--threads 1]
    .venv/bin/python benchmarks/bench_vs_trl.py --model smollm2:135m-instruct --prompts 4 --G 4 --steps 3

Same model, same prompts (the synthetic task's training problems, plain-text prompts), same G, the same maximum
completion length, sampling at temperature 1 (no top-k / top-p), num_iterations = 2, and the same batch geometry:
one RL step = P prompts x G completions, split into 2 optimizer steps per pass of 2 micro-batches each:

    softgate: rollout.prompts_per_step=P, num_generations=G, algo.minibatches=2, algo.micro_batch_size=P*G/4
    TRL:      per_device_train_batch_size=P*G/4, gradient_accumulation_steps=2, steps_per_generation=4,
              num_iterations=2, max_steps = 4 x steps   (4 optimizer steps per generation batch)

Both use the same rewards (softgate's format + answer rewards), the sigmoid gate at tau (10, 12), AdamW at the
same learning rate, no KL term, no evaluation and no checkpoints. Each trainer runs in its own fresh process
(peak RSS is that process's ru_maxrss), the two alternate for --rounds rounds, and the first RL step of each run
is left out as warm-up. Threads: both children get the same fixed --threads (torch.set_num_threads and the
OMP/MKL variables are set before torch is imported), so neither trainer gets more of the machine than the other.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from softgate.threads import THREAD_ENV_VARS


def run_softgate(args) -> dict:
    from softgate.config import load_config
    from softgate.rundir import read_jsonl
    from softgate.train import train

    out = Path(tempfile.mkdtemp(prefix="bench_sg_"))
    n = args.prompts * args.G
    cfg = load_config(None, [
        f"model.name_or_path={args.model}", f"steps={args.steps}", f"rollout.prompts_per_step={args.prompts}",
        f"rollout.num_generations={args.G}", f"rollout.max_new_tokens={args.max_new_tokens}",
        "rollout.temperature=1.0", "algo.num_iterations=2", "algo.minibatches=2", f"algo.micro_batch_size={n // 4}",
        "gate.name=sigmoid", "gate.tau_pos=10", "gate.tau_neg=12", f"optim.lr={args.lr}", "optim.max_grad_norm=1.0",
        "eval.size=0", "log.save_every=0", "log.progress=false", f"output_dir={out}", f"task.difficulty={args.difficulty}",
    ])
    train(cfg)
    per_step = {}
    for m in read_jsonl(out / "metrics.jsonl"):
        per_step.setdefault(m["rl_step"], m["time/step"])
    times = [per_step[k] for k in sorted(per_step)][1:]
    return {"seconds_per_step": statistics.mean(times), "steps": len(times)}


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from softgate.integrations.trl import reward_functions
    from softgate.modeling import load_model_and_tokenizer
    from softgate.tasks import get_task

    task = get_task("synthetic")
    examples = task.load("train", n=4000, difficulty=args.difficulty, seed=0)
    model, tokenizer = load_model_and_tokenizer(args.model)
    dataset = Dataset.from_dict({"prompt": [task.render_prompt(e, tokenizer) for e in examples],
                                 "answer": [e.reference for e in examples]})
    n = args.prompts * args.G
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_trl_"), per_device_train_batch_size=n // 4,
        gradient_accumulation_steps=2, steps_per_generation=4, num_generations=args.G, num_iterations=2,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        loss_type="sapo", sapo_temperature_pos=10.0, sapo_temperature_neg=12.0, beta=0.0,
        learning_rate=args.lr, lr_scheduler_type="constant", max_grad_norm=1.0, adam_beta2=0.99, weight_decay=0.0,
        max_steps=4 * args.steps, bf16=False, use_cpu=True, report_to=[], save_strategy="no", logging_steps=4,
        seed=0, disable_tqdm=True,
    )
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, _control, **_kw):
            if state.global_step % 4 == 0:  # an RL step (one generation batch) ends every 4 optimizer steps
                marks.append(time.perf_counter())

    trainer = GRPOTrainer(model=model, reward_funcs=reward_functions(extract="answer", symbolic=False), args=config,
                          train_dataset=dataset, processing_class=tokenizer, callbacks=[Clock()])
    torch.manual_seed(0)
    trainer.train()
    times = [b - a for a, b in zip(marks, marks[1:])]  # the first RL step (warm-up) has no start mark
    return {"seconds_per_step": statistics.mean(times), "steps": len(times)}


def child(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    result = run_softgate(args) if args.child == "softgate" else run_trl(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:tiny")
    parser.add_argument("--steps", type=int, default=4, help="RL steps per run (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating softgate/TRL rounds")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--G", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--difficulty", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each trainer (the same for both)")
    parser.add_argument("--child", choices=["softgate", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    results: dict[str, list[dict]] = {"softgate": [], "trl": []}
    for r in range(args.rounds):
        for name in ("softgate", "trl"):
            cmd = [sys.executable, __file__, "--child", name, "--model", args.model, "--steps", str(args.steps),
                   "--prompts", str(args.prompts), "--G", str(args.G), "--max-new-tokens", str(args.max_new_tokens),
                   "--difficulty", str(args.difficulty), "--lr", str(args.lr)]
            cmd += ["--threads", str(args.threads)]
            env = {**os.environ, **{v: str(args.threads) for v in THREAD_ENV_VARS}}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{name} run failed (exit {proc.returncode})")
            res = json.loads(line[0][len("RESULT "):])
            results[name].append(res)
            print(f"round {r + 1} {name:<9} {res['seconds_per_step']:7.2f} s/step  peak RSS {res['peak_rss_mb']:6.0f} MB",
                  flush=True)

    def med(name, key):
        return statistics.median(x[key] for x in results[name])

    sg_t, trl_t = med("softgate", "seconds_per_step"), med("trl", "seconds_per_step")
    sg_m, trl_m = med("softgate", "peak_rss_mb"), med("trl", "peak_rss_mb")
    print()
    print(f"{args.prompts} prompts x G={args.G}, {args.max_new_tokens} new tokens max, num_iterations=2, "
          f"{args.steps - 1} measured RL steps per run, median of {args.rounds} rounds, model {args.model}, "
          f"{args.threads} torch thread(s) each")
    print(f"{'':<10}{'s/RL step':>12}{'peak RSS MB':>14}")
    print(f"{'softgate':<10}{sg_t:>12.2f}{sg_m:>14.0f}")
    print(f"{'TRL sapo':<10}{trl_t:>12.2f}{trl_m:>14.0f}")
    print(f"speed-up (TRL time / softgate time): {trl_t / sg_t:.2f}x   memory ratio (softgate / TRL): {sg_m / trl_m:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
