"""Supervised warm start of the embedded tiny model on the synthetic task (``softgate pretrain``).

The recipe, from scratch and deterministic for a given seed:

1. build the word-level tokenizer (``softgate.tokenizer``);
2. initialise a small Llama-architecture causal LM from the seed;
3. train it with next-token cross-entropy on the completion tokens (the prompt is context only) of synthetic
   problems whose gold completions are *deliberately noisy*: with probability ``format_noise`` a completion has a
   format defect (a missing ``</think>``, stray text between the blocks, no ``<answer>`` tags, or no reasoning) and,
   independently, with probability ``answer_noise`` its number is off by 1 or 2 (either the last equation's result
   and thus the answer, or only the answer copied from a correct equation).

A model fitted to that mixture samples, at temperature 1, roughly the same mixture: it follows the format only
partly and answers only some problems right, yet the correct behaviour is always among its samples (pass@8 is far
above pass@1). That is the room RL needs: every group of G completions tends to hold both rewarded and unrewarded
answers, and the choice that separates them is a handful of tokens, so a few hundred CPU steps move it.

``measure`` reports the held-out start metrics (format rate, accuracy, pass@k) that the asset card records.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softgate.tasks import synthetic

if TYPE_CHECKING:
    import torch

# torch and transformers are imported inside the functions: `softgate --help` reads PretrainConfig's defaults.

# Completion defects a warm-start target can carry (see ``corrupt_completion``).
# Under softgate.rewards.format_reward, "extra_text" scores 0.5 and the others 0.25; "bare_answer" also leaves no
# <answer> to grade, so it scores 0 on the answer reward whatever the number.
FORMAT_DEFECTS = ("no_close_think", "extra_text", "bare_answer", "no_think")
ANSWER_DEFECTS = ("calc", "copy")


@dataclass
class PretrainConfig:
    """Everything ``softgate pretrain`` needs; the defaults reproduce the shipped ``embedded:tiny`` checkpoint."""

    out: str = "softgate/assets/tiny"
    """Directory the checkpoint (safetensors, tokenizer, configs, card) is written to."""
    seed: int = 0
    """Seeds the model initialisation, the training problems and their noise."""
    steps: int = 400
    """Optimizer steps; stopping early (rather than at convergence) is part of the recipe."""
    batch_size: int = 64
    """Problems per optimizer step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up over ``warmup`` steps, then cosine to 10%)."""
    warmup: int = 20
    weight_decay: float = 0.01
    difficulty: tuple[int, ...] = (1, 2)
    """Levels of the training problems (see ``softgate.tasks.synthetic``)."""
    format_noise: float = 0.6
    """Probability that a target completion has a format defect."""
    format_rate: float = 1.0
    """Share of targets written in the paper's format at all; the others are plain (the worked equations and the
    number, no tag). 1.0 = every target (the ``embedded:tiny`` recipe); 0.1 makes a cold start
    (``embedded:tiny-cold``). ``format_noise`` applies inside the formatted share."""
    answer_noise: float = 0.6
    """Probability that a target completion has a wrong number."""
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 128
    eval_n: int = 100
    """Held-out test problems per level for the start metrics (0: skip measuring)."""
    eval_k: int = 4
    """Samples per problem for the start metrics (pass@1 is averaged over them; pass@k reported too)."""
    threads: int = 2
    """torch CPU threads."""

    def validate(self) -> None:
        for name in ("steps", "batch_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"pretrain {name}={getattr(self, name)}; must be >= 1")
        for name in ("format_noise", "answer_noise", "format_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"pretrain {name}={getattr(self, name)}; must be in [0, 1]")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"pretrain hidden_size={self.hidden_size} not divisible by num_heads={self.num_heads}")
        if not self.lr > 0:
            raise ValueError(f"pretrain lr={self.lr}; must be > 0")


# ---------------------------------------------------------------------------------------------------------------
# Noisy targets


def corrupt_completion(problem: synthetic.SyntheticProblem, rng: random.Random,
                       format_noise: float, answer_noise: float, format_rate: float = 1.0) -> str:
    """The gold completion of ``problem``, with a wrong number and/or a format defect at the given rates; with
    probability ``1 - format_rate`` written plain instead (``3 + 5 = 8. 8``: the equations and the number, no
    tag), which scores 0 on both rewards."""
    answer = synthetic.apply_steps(problem.start, problem.steps)[-1]
    think = problem.completion.split("<think>")[1].split("</think>")[0]
    if rng.random() < answer_noise:
        wrong = answer + rng.choice((-2, -1, 1, 2))
        wrong = wrong if wrong >= 0 else answer + 1
        if rng.choice(ANSWER_DEFECTS) == "calc":  # the last equation itself is wrong, the answer follows it
            head, _, _ = think.rpartition("= ")
            think = f"{head}= {wrong}"
        answer = wrong
    # format_rate = 1 draws nothing here, so that the embedded:tiny recipe's random stream is unchanged.
    if format_rate < 1.0 and rng.random() >= format_rate:
        return f"{think.rstrip('.')}. {answer}"
    text = f"<think>{think}</think><answer>{answer}</answer>"
    if rng.random() < format_noise:
        match rng.choice(FORMAT_DEFECTS):
            case "no_close_think":
                text = f"<think>{think}<answer>{answer}</answer>"
            case "extra_text":
                text = f"<think>{think}</think> {answer}<answer>{answer}</answer>"
            case "bare_answer":
                text = f"<think>{think}</think>{answer}"
            case "no_think":
                text = f"<answer>{answer}</answer>"
    return text


# ---------------------------------------------------------------------------------------------------------------
# Model and batches


def build_model(tokenizer: Any, cfg: PretrainConfig) -> Any:
    """A freshly initialised Llama-architecture causal LM sized by ``cfg`` (tied embeddings)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    # Sampling defaults match what RL samples with: plain temperature-1 sampling, no top-k / top-p truncation.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=48,
    )
    return model


def encode_example(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` + ``completion`` + EOS as RL sees them (prompt and completion tokenized apart, no
    special tokens added: the rollout continues the prompt's tokens), and the completion mask (1 on the
    completion and EOS, the tokens a supervised loss trains)."""
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p_ids + c_ids, [0] * len(p_ids) + [1] * len(c_ids)


def encode_batch(tokenizer: Any, prompts: Sequence[str], completions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding).

    Shapes:
        input_ids, attention_mask, labels: (B, T), T = longest prompt + completion + EOS in the batch.
    """
    import torch

    rows, labels = [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        ids, mask = encode_example(tokenizer, prompt, completion)
        rows.append(ids)
        labels.append([i if m else -100 for i, m in zip(ids, mask)])
    T = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (T - len(r)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    label_ids = torch.tensor([lab + [-100] * (T - len(lab)) for lab in labels])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids}


# ---------------------------------------------------------------------------------------------------------------
# Measuring


def score(completion: str, reference: str) -> tuple[bool, bool]:
    """(format met in full, answer correct): ``format_reward == 1`` and ``answer_reward == 1`` of
    ``softgate.rewards``, exact integer grading as the synthetic task does it (no math-verify)."""
    from softgate import rewards

    fmt = rewards.format_reward(completion) == 1.0
    return fmt, rewards.answer_reward(completion, reference, symbolic=False) == 1.0


def sample_completions(model: Any, tokenizer: Any, prompts: Sequence[str], *, k: int = 1, temperature: float = 1.0,
                       max_new_tokens: int = 48, batch_size: int = 256, seed: int = 0) -> list[list[str]]:
    """``k`` sampled completions per prompt (decoded without special tokens), left-padded batched generation."""
    import torch

    torch.manual_seed(seed)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    flat = [p for p in prompts for _ in range(k)]
    out: list[str] = []
    try:
        for i in range(0, len(flat), batch_size):
            enc = tokenizer(flat[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(
                    **enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                    max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            out.extend(tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return [out[i * k:(i + 1) * k] for i in range(len(prompts))]


def measure(model: Any, tokenizer: Any, problems: Sequence[synthetic.SyntheticProblem], *, temperature: float,
            k: int = 8, seed: int = 0) -> dict[str, float]:
    """Held-out start metrics over ``k`` samples per problem: format rate, accuracy (mean pass@1), pass@k, mean
    completion length in tokens."""
    samples = sample_completions(model, tokenizer, [p.prompt for p in problems], k=k, temperature=temperature,
                                 seed=seed)
    fmt = acc = pass_k = length = 0.0
    for problem, group in zip(problems, samples):
        scored = [score(c, problem.reference) for c in group]
        fmt += sum(f for f, _ in scored) / k
        acc += sum(a for _, a in scored) / k
        pass_k += any(a for _, a in scored)
        length += sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) + 1 for c in group) / k
    n = max(len(problems), 1)
    return {"format_rate": fmt / n, "accuracy": acc / n, f"pass@{k}": pass_k / n, "length_mean": length / n}


# ---------------------------------------------------------------------------------------------------------------
# The run


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(cfg: PretrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Build tokenizer and model, train on noisy targets, write the checkpoint to ``cfg.out``; return the record
    (recipe, loss, timings, start metrics) that is also saved as ``pretrain.json``."""
    import torch
    from tqdm.auto import tqdm

    from softgate.tokenizer import build_tokenizer

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    # torch's default (per-tensor) AdamW, not softgate.lifecycle.adamw's fused kernel: the shipped warm starts were
    # made with it, and `softgate pretrain` reproduces them bit for bit (docs/embedded.md).
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    problems = synthetic.iter_problems(cfg.seed, cfg.difficulty, "train")
    noise_rng = random.Random(f"softgate-pretrain-noise/{cfg.seed}")

    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=not progress, dynamic_ncols=True)
    loss_ema = None
    for step in bar:
        batch_problems = [next(problems) for _ in range(cfg.batch_size)]
        targets = [corrupt_completion(p, noise_rng, cfg.format_noise, cfg.answer_noise, cfg.format_rate)
                   for p in batch_problems]
        batch = encode_batch(tokenizer, [p.prompt for p in batch_problems], targets)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        loss = model(**batch).loss  # mean cross-entropy over the completion tokens of the batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.3f}", lr=f"{_lr_at(step, cfg):.1e}")
    train_seconds = time.perf_counter() - t0
    model.eval()

    record: dict[str, Any] = {
        # Where it was written and how many threads ran it are not part of the recipe.
        "recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
                   if k not in ("out", "threads")},
        "parameters": n_params,
        "final_loss_ema": loss_ema,
        "train_seconds": round(train_seconds, 1),
        "torch_threads": cfg.threads,
        "start_metrics": {},
    }
    if cfg.eval_n > 0:
        for level in cfg.difficulty:
            test = synthetic.generate(cfg.eval_n, synthetic.TEST_SEED, level, "test")
            for temperature in (1.0, 0.7):
                m = measure(model, tokenizer, test, temperature=temperature, k=cfg.eval_k, seed=cfg.seed)
                record["start_metrics"][f"level{level}/T{temperature}"] = {k: round(v, 4) for k, v in m.items()}
    save_checkpoint(model, tokenizer, out, record)
    return record


def save_checkpoint(model: Any, tokenizer: Any, out: Path, record: dict[str, Any]) -> None:
    """Model (safetensors), tokenizer, generation config, ``pretrain.json`` and a README card into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    _portable_tokenizer_class(out / "tokenizer_config.json")
    (out / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "README.md").write_text(model_card(record))


def _portable_tokenizer_class(path: Path) -> None:
    """transformers 5 writes its own class name (``TokenizersBackend``), which transformers 4 cannot resolve;
    ``PreTrainedTokenizerFast`` loads the same ``tokenizer.json`` in both."""
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2) + "\n")


def recipe_command(recipe: dict[str, Any], threads: int) -> str:
    """The ``softgate pretrain`` command line that rebuilds ``recipe``: the options that differ from the defaults."""
    defaults = asdict(PretrainConfig())
    flags = []
    for key, value in recipe.items():
        default = defaults[key]
        if (list(default) if isinstance(default, tuple) else default) != value:
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            flags.append(f"--{key.replace('_', '-')} {shown}")
    return " ".join(["softgate pretrain --out DIR", *flags, f"--threads {threads}"])


def model_card(record: dict[str, Any]) -> str:
    """The asset card: what the model is, how it was made, its measured start metrics."""
    r = record["recipe"]
    lines = [
        "# A warm-start policy for softgate's synthetic task (`softgate pretrain`)",
        "",
        f"A {record['parameters'] / 1e6:.2f}M-parameter Llama-architecture causal LM ({r['num_layers']} layers, "
        f"hidden {r['hidden_size']}, {r['num_heads']} heads, tied embeddings) with a word-level tokenizer built by "
        "`softgate.tokenizer`, trained from scratch on the synthetic arithmetic task (`softgate.tasks.synthetic`).",
        "It is deliberately imperfect: the supervised targets carry format defects and wrong numbers, so that the",
        "start policy follows the `<think>...</think><answer>...</answer>` format only partly and answers only some",
        "problems right -- room for RL to show learning. See docs/embedded.md."
        + (f" Only {r['format_rate']:.0%} of its targets use the format at all (the others are plain equations and "
           "the number): a cold start, whose format RL must discover." if r["format_rate"] < 1.0 else ""),
        "",
        f"Reproduce: `{recipe_command(r, record['torch_threads'])}` (another thread count may change the last bits "
        "of the weights). Recipe:",
        "",
        "```json",
        json.dumps(r, indent=2),
        "```",
        "",
        f"Training took {record['train_seconds']} s of wall time with {record['torch_threads']} torch thread(s) "
        "(on a shared machine: expect less on an idle one).",
        "",
        "## Start metrics (held-out test split, sampled)",
        "",
        "| split / temperature | format rate | accuracy (pass@1) | pass@k | mean length (tokens) |",
        "|---|---|---|---|---|",
    ]
    for key, m in record["start_metrics"].items():
        pk = next(v for name, v in m.items() if name.startswith("pass@"))
        lines.append(f"| {key} | {m['format_rate']:.3f} | {m['accuracy']:.3f} | {pk:.3f} | {m['length_mean']:.1f} |")
    lines += ["", f"k = {r['eval_k']} samples per problem, {r['eval_n']} problems per level.", ""]
    return "\n".join(lines)
