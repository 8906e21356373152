"""From a task config to examples and prompts: the one place that knows where each task's data comes from."""

from __future__ import annotations

from softgate.config import ConfigError, TaskConfig
from softgate.tasks import Examples, Task, get_task

# The synthetic task's held-out split is fixed; this many problems are drawn for it.
SYNTHETIC_TEST_SIZE = 500


def load_task(cfg: TaskConfig) -> Task:
    try:
        return get_task(cfg.name)
    except KeyError as err:
        raise ConfigError(f"task.name: {err.args[0]}") from None


def load_examples(task: Task, cfg: TaskConfig, split: str, *, seed: int = 0) -> Examples:
    """Training (``split="train"``) or held-out (``"test"``) examples of the configured task."""
    if task.name == "synthetic":
        n = cfg.train_size if split == "train" else SYNTHETIC_TEST_SIZE
        return task.load(split, n=n, difficulty=cfg.difficulty, seed=seed)
    source = cfg.train_file if split == "train" else cfg.test_file
    if not source:
        raise ConfigError(f"task.{split}_file: task {cfg.name!r} needs a data file (.jsonl/.json/.parquet or "
                          f"hf:owner/name)")
    limit = cfg.train_size if split == "train" and cfg.train_size > 0 else None
    return task.load(source, limit=limit)


def render_prompts(task: Task, examples, tokenizer) -> list[str]:
    return [task.render_prompt(example, tokenizer) for example in examples]
