"""From a task config to examples and prompts: the one place that knows where each task's data comes from."""

from __future__ import annotations

import warnings
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


def load_training_data(cfg: TaskConfig, tokenizer, *, seed: int, eval_size: int, max_new_tokens: int,
                       eval_max_new_tokens: int | None = None, context: int | None = None) -> TrainingData:
    """The training and held-out examples of ``cfg``, with the training prompts rendered and checked by
    :func:`check_prompts` (``eval_size`` 0 keeps the whole test split; ``context`` is the model's number of
    positions, None when unknown)."""
    task = load_task(cfg)
    train = load_examples(task, cfg, "train", seed=seed)
    if len(train) == 0:
        raise ConfigError("task: the training split is empty")
    test = load_examples(task, cfg, "test")
    test = test[:eval_size] if eval_size else test
    graders = [task_of(e, task) for e in train]
    prompts = [t.render_prompt(e, tokenizer) for t, e in zip(graders, train)]
    check_prompts(train, prompts, tokenizer, task=cfg.name, max_prompt_tokens=cfg.max_prompt_tokens,
                  new_tokens=("rollout.max_new_tokens", max_new_tokens), context=context)
    if context is not None and eval_max_new_tokens is not None and len(test):
        check_prompts(test, [task.render_prompt(e, tokenizer) for e in test], tokenizer, task=cfg.name,
                      new_tokens=("eval.max_new_tokens", eval_max_new_tokens), context=context, split="held-out")
    return TrainingData(task, train, test, graders, prompts)


# A larger share of unknown tokens in the prompts means the tokenizer cannot read the data (a warning).
UNKNOWN_TOKEN_WARNING = 0.05


def check_prompts(examples, prompts: list[str], tokenizer, *, task: str, new_tokens: tuple[str, int],
                  context: int | None, max_prompt_tokens: int | None = None, split: str = "training") -> None:
    """A warning naming the task and tokenizer when more than ``UNKNOWN_TOKEN_WARNING`` of the prompt tokens are the
    tokenizer's unknown token (training prompts only); errors for a prompt longer than ``task.max_prompt_tokens``
    or one that, with ``new_tokens = (key, n)`` generated tokens, exceeds the model's ``context``."""
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    total = sum(len(row) for row in ids)
    unknown = sum(row.count(unk) for row in ids) if unk is not None and split == "training" else 0
    if total and unknown / total > UNKNOWN_TOKEN_WARNING:
        warnings.warn(f"task {task}: {unknown} of {total} {split} prompt tokens ({100 * unknown / total:.0f}%) are "
                      f"the unknown token {tokenizer.unk_token!r} of the tokenizer "
                      f"{getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}: the model cannot read "
                      f"these prompts; use a model whose tokenizer covers the data", stacklevel=4)
    key, n_new = new_tokens
    for row, example in zip(ids, examples):
        if max_prompt_tokens is not None and len(row) > max_prompt_tokens:
            raise ConfigError(f"task.max_prompt_tokens: prompt of example {example.id!r} has {len(row)} tokens "
                              f"(> {max_prompt_tokens}); raise task.max_prompt_tokens or shorten the data")
        if context is not None and len(row) + n_new > context:
            raise ConfigError(f"{key}: {split} example {example.id!r} of task {task} has a {len(row)}-token prompt; "
                              f"+ {n_new} new tokens = {len(row) + n_new} > the model's context of {context} "
                              f"positions (max_position_embeddings); lower {key}, shorten the prompts or use a model "
                              f"with a longer context")


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
    return _load_file(task, source, f"task.{split}_file", limit=limit, **_hub_split(source, split))


def _load_file(task: Task, source: str, key: str, **kwargs) -> Examples:
    """``task.load(source)``, with a binary or non-UTF-8 file reported as a config error naming the key and file."""
    try:
        return task.load(source, **kwargs)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{key}: {source}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None


def _load_mix(cfg: TaskConfig, seed: int) -> Examples:
    """The weighted mix of ``task.train_mix`` (the paper: GSM8K train + DeepMath-103K, equal weights)."""
    sources, weights = [], []
    for i, entry in enumerate(cfg.train_mix or []):
        try:
            part_task = get_task(entry["task"])
        except KeyError as err:
            raise ConfigError(f"task.train_mix[{i}].task: {err.args[0]}") from None
        sources.append(_load_file(part_task, entry["source"], f"task.train_mix[{i}].source",
                                  **_hub_split(entry["source"], "train")))
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
