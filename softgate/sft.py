"""Cold-start supervised fine-tuning before RL (``softgate sft``), on TRL's ``SFTTrainer``.

RL learns only from reward differences inside a group: a model that never writes ``<think>...</think><answer>...
</answer>`` scores 0 on every sample, every advantage is 0 and RL has nothing to learn from (SmolLM2-135M-Instruct
out of the box). R1-style pipelines therefore start with a short supervised stage on the format.

Data: the task's training problems (``task.train_size`` of them) that carry a target completion in
``Example.meta["completion"]`` (the synthetic task: ``<think>3 + 5 = 8</think><answer>8</answer>``), each
prompt rendered exactly as RL renders it (``softgate.data.load_training_data``: the chat template and the paper's
system instruction when the tokenizer has a template) and tokenized as RL sees it (``pretrain.encode_example``:
prompt tokens, then the completion's tokens and EOS). The loss is on the completion and EOS only.

Output: a Hugging Face folder (weights, config, tokenizer) that ``softgate train`` takes as
``model.name_or_path``; with ``model.lora`` the adapters are merged into it first. Beside the model files:
``sft.json`` (settings, loss log, timings) and ``sft_config.yaml`` (the config it ran with).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from softgate.config import Config, ConfigError, save_config, to_dict

SFT_RECORD = "sft.json"
SFT_CONFIG = "sft_config.yaml"
# softgate's schedule names -> transformers' (its "constant" would skip the warmup).
_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def sft_examples(cfg: Config, tokenizer: Any, context: int | None = None) -> list[dict[str, list[int]]]:
    """The training rows: ``input_ids`` and ``completion_mask`` per problem (TRL's pre-tokenized format).
    Errors name the task without targets, or the first example longer than ``sft.max_length``."""
    from softgate.data import load_training_data
    from softgate.pretrain import encode_example

    data = load_training_data(cfg.task, tokenizer, seed=cfg.seed, eval_size=cfg.eval.size,
                              max_new_tokens=cfg.rollout.max_new_tokens, context=context)
    rows = []
    for example, prompt in zip(data.train, data.prompts):
        target = example.meta.get("completion")
        if not target:
            raise ConfigError(f"task.name: softgate sft needs target completions, and example {example.id!r} of "
                              f"task {cfg.task.name!r} has none (the synthetic task has them)")
        ids, mask = encode_example(tokenizer, prompt, target)
        if len(ids) > cfg.sft.max_length:
            raise ConfigError(f"sft.max_length: example {example.id!r} has {len(ids)} tokens (prompt + target + "
                              f"EOS) > {cfg.sft.max_length}; raise sft.max_length")
        rows.append({"input_ids": ids, "completion_mask": mask})
    return rows


def trainer_args(cfg: Config, work_dir: str, use_cpu: bool) -> Any:
    """TRL's ``SFTConfig`` for ``cfg.sft``: softgate saves the model itself (no trainer checkpoints), logs to no
    tracker, and sets what TRL would otherwise default differently (bf16 and gradient checkpointing on)."""
    import dataclasses

    from trl import SFTConfig

    sft = cfg.sft
    # transformers renamed gradient_checkpointing (TRL defaults it to on); give the name this version reads.
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return SFTConfig(
        output_dir=work_dir, max_steps=sft.steps, per_device_train_batch_size=sft.batch_size,
        learning_rate=sft.lr, lr_scheduler_type=_SCHEDULES[sft.schedule], warmup_steps=sft.warmup_steps,
        weight_decay=sft.weight_decay, max_length=sft.max_length, completion_only_loss=True,
        bf16=cfg.model.compute_dtype == "bfloat16", fp16=cfg.model.compute_dtype == "float16",
        **{checkpointing: cfg.model.gradient_checkpointing}, use_cpu=use_cpu, seed=cfg.seed,
        data_seed=cfg.seed, logging_steps=sft.log_every, save_strategy="no", report_to="none",
        disable_tqdm=not cfg.log.progress, dataloader_num_workers=0,
    )


def sft(cfg: Config, out: Path) -> dict[str, Any]:
    """Run the supervised stage of ``cfg`` and write the model to ``out`` (which must be new or empty; see
    ``softgate sft --overwrite``). Returns the record also written to ``out/sft.json``."""
    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from softgate.checkpoint import no_progress_bars
    from softgate.device import check_compute_dtype, resolve_device
    from softgate.generation import use_clean_generation_config
    from softgate.lora import merge, peft_config
    from softgate.modeling import load_model_and_tokenizer
    from softgate.threads import apply_threads

    threads = apply_threads(cfg.model.threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.model.device)
    check_compute_dtype(device, cfg.model.compute_dtype)
    with no_progress_bars():
        model, tokenizer = load_model_and_tokenizer(cfg.model.name_or_path, device=str(device))
    use_clean_generation_config(model)  # the written model samples from exactly what it computes
    rows = sft_examples(cfg, tokenizer, getattr(model.config, "max_position_embeddings", None))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="softgate-sft-") as work_dir, quiet_datasets(), \
            warnings.catch_warnings():
        # transformers' rename of gradient -> activation checkpointing, read inside TRL/peft: not the user's to fix
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.* is deprecated", category=FutureWarning)
        trainer = SFTTrainer(model=model, args=trainer_args(cfg, work_dir, device.type == "cpu"),
                             train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             peft_config=peft_config(cfg.model.lora) if cfg.model.lora is not None else None)
        result = trainer.train()
    seconds = time.perf_counter() - t0
    model = merge(trainer.model)  # LoRA folded in: a plain model RL loads like any other
    losses = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
    record = {"base_model": cfg.model.name_or_path, "task": cfg.task.name, "difficulty": cfg.task.difficulty,
              "examples": len(rows), "sft": to_dict(cfg)["sft"], "lora": to_dict(cfg)["model"]["lora"],
              "seed": cfg.seed, "threads": threads, "train_seconds": round(seconds, 1),
              "train_loss": result.training_loss, "loss_log": losses}
    out.mkdir(parents=True, exist_ok=True)
    with no_progress_bars():
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    save_config(cfg, out / SFT_CONFIG)
    (out / SFT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No ``datasets`` progress bars inside the block (TRL draws one per preparation pass of a few ms each)."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
