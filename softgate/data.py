"""From a task config to examples and prompts: the one place that knows where each task's data comes from."""

from __future__ import annotations

from dataclasses import dataclass

from softgate.config import ConfigError, TaskConfig
from softgate.tasks import Examples, Task, get_task
from softgate.tasks.mix import mix

# The synthetic task's held-out split is fixed; this many problems are drawn for it.
SYNTHETIC_TEST_SIZE = 500


@dataclass
class TrainingData:
    """Everything the trainer reads from the data, loaded once.

    Fields:
        task:    the configured task (it grades held-out problems)
        train:   training examples; ``graders[i]`` grades ``train[i]`` (mixed data holds several tasks)
        test:    held-out examples (the first ``eval.size`` of the test split)
        graders: one task per training example
        prompts: one rendered prompt per training example
    """

    task: Task
    train: Examples
    test: list
    graders: list[Task]
    prompts: list[str]


def load_training_data(cfg: TaskConfig, tokenizer, *, seed: int, eval_size: int) -> TrainingData:
    """The training and held-out examples of ``cfg``, with the training prompts rendered and their length checked
    against ``cfg.max_prompt_tokens`` (``eval_size`` 0 keeps the whole test split)."""
    task = load_task(cfg)
    train = load_examples(task, cfg, "train", seed=seed)
    if len(train) == 0:
        raise ConfigError("task: the training split is empty")
    test = load_examples(task, cfg, "test")
    graders = [task_of(e, task) for e in train]
    prompts = [t.render_prompt(e, tokenizer) for t, e in zip(graders, train)]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    for length, example in zip(lengths, train):
        if length > cfg.max_prompt_tokens:
            raise ConfigError(f"task.max_prompt_tokens: prompt of example {example.id!r} has {length} tokens "
                              f"(> {cfg.max_prompt_tokens}); raise task.max_prompt_tokens or shorten the data")
    return TrainingData(task, train, test[:eval_size] if eval_size else test, graders, prompts)


def load_task(cfg: TaskConfig) -> Task:
    try:
        return get_task(cfg.name)
    except KeyError as err:
        raise ConfigError(f"task.name: {err.args[0]}") from None


def load_examples(task: Task, cfg: TaskConfig, split: str, *, seed: int = 0) -> Examples:
    """Training (``split="train"``) or held-out (``"test"``) examples of the configured task."""
    if split == "train" and cfg.train_mix:
        return _load_mix(cfg, seed)
    if task.name == "synthetic":
        n = cfg.train_size if split == "train" else SYNTHETIC_TEST_SIZE
        return task.load(split, n=n, difficulty=cfg.difficulty, seed=seed)
    source = cfg.train_file if split == "train" else cfg.test_file
    if not source:
        raise ConfigError(f"task.{split}_file: task {cfg.name!r} needs a data file (.jsonl/.json/.parquet or "
                          f"hf:owner/name)")
    limit = cfg.train_size if split == "train" and cfg.train_size > 0 else None
    return task.load(source, limit=limit, **_hub_split(source, split))


def _load_mix(cfg: TaskConfig, seed: int) -> Examples:
    """The weighted mix of ``task.train_mix`` (the paper: GSM8K train + DeepMath-103K, equal weights)."""
    sources, weights = [], []
    for i, entry in enumerate(cfg.train_mix or []):
        try:
            part_task = get_task(entry["task"])
        except KeyError as err:
            raise ConfigError(f"task.train_mix[{i}].task: {err.args[0]}") from None
        sources.append(part_task.load(entry["source"], **_hub_split(entry["source"], "train")))
        weights.append(float(entry.get("weight", 1.0)))
    n = cfg.train_size if cfg.train_size > 0 else None
    return Examples(mix(sources, weights, n=n, seed=seed), origin="mix")


def task_of(example, default: Task) -> Task:
    """The task that grades ``example``: its source task when that is a registered task (mixed training data)."""
    try:
        return get_task(example.source) if example.source != default.name else default
    except (KeyError, ImportError):
        return default


def _hub_split(source: str, split: str) -> dict[str, str]:
    """Hugging Face datasets are asked for the split by name; local files hold one split each."""
    return {"split": split} if str(source) == "hf" or str(source).startswith("hf:") else {}
