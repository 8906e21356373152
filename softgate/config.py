"""Typed run configuration: dataclasses, YAML loading with ``--set key=value`` overrides, and validation.

Every hyperparameter has one home here and one docstring-comment. Errors name the key, and the file and line
when the value came from a YAML file.

    cfg = load_config("configs/embedded.yaml", overrides=["gate.name=erf", "seed=1"])
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin, get_type_hints

import yaml

from softgate.choices import AdvantageEstimator, AggMode, Backend, DType, KLEstimator, Level, Schedule
from softgate.grading import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, MAX_ANSWER_CHARS

if TYPE_CHECKING:  # softgate.gates imports torch; the config stays light so that --help is fast
    from softgate.gates import GateSpec


class ConfigError(ValueError):
    """A bad configuration value; the message names the key (and file:line when known)."""


@dataclass
class ModelConfig:
    name_or_path: str = "embedded:tiny"
    """``embedded:tiny`` (shipped with softgate), a local directory, a hub name, ``smollm2:135m-instruct`` or a
    ``.gguf`` file (dequantized to fp32 once and cached as safetensors)."""
    device: str = "auto"
    """Where the model, rollouts, losses and evaluation run: auto (cuda if available, else mps, else cpu), cpu, cuda,
    cuda:N or mps. An accelerator this machine lacks is an error, never a silent CPU run."""
    compute_dtype: DType = "float32"
    """Forward/backward precision through torch.autocast; parameters and optimizer state stay float32 (see
    optim.master_weights). bfloat16 runs on CPU and recent GPUs; float16 needs a GPU. (Old name: model.dtype.)"""
    disable_dropout: bool = True
    """Set every dropout probability to 0 at load, so that the policy being updated is the one that sampled
    (dropout makes r != 1 on on-policy updates)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory (slower)."""
    threads: int = 0
    """torch intra-op threads; 0 = automatic: the cores this process may use minus the machine's load (see
    softgate/threads.py), so that a run next to another busy process does not thrash it."""
    shared_prompt_pass: bool = True
    """In log-prob passes, run each prompt once per group of G and index its KV cache out to the G completions
    (exact; fewer tokens). Turn off for models whose cache cannot be indexed by batch."""


@dataclass
class TaskConfig:
    name: str = "synthetic"
    """Task name: synthetic, gsm8k, math500, aime, deepmath (see ``softgate.tasks``)."""
    train_file: str | None = None
    """Local JSONL/JSON/Parquet training file (or a hub dataset name) for file-based tasks."""
    test_file: str | None = None
    """Local held-out file for evaluation (file-based tasks)."""
    train_mix: list[dict[str, Any]] | None = None
    """Train on a weighted mix of tasks instead of ``train_file``: a list of ``{task: NAME, source: FILE|hf,
    weight: W}``. Each completion is graded by its own task; held-out evaluation uses ``name``/``test_file``."""
    difficulty: int = 1
    """Synthetic task only: difficulty level of the generated problems."""
    train_size: int = 4000
    """Number of training problems to use (generated for synthetic; first N rows for files; 0 = all)."""
    max_prompt_tokens: int = 256
    """Prompts longer than this (in tokens) are an error naming the example id."""
    answer_weight: float = 1.0
    """Weight of the answer reward in the total reward."""
    format_weight: float = 1.0
    """Weight of the format reward (1 / 0.5 / 0.25 / 0) in the total reward."""


@dataclass
class RolloutConfig:
    backend: Backend = "hf"
    """Sampler: Hugging Face ``generate`` (default) or vLLM (GPU, ``pip install softgate[vllm]``)."""
    prompts_per_step: int = 16
    """Prompts per RL step (rollout batch); each gets ``num_generations`` completions."""
    num_generations: int = 8
    """G: completions per prompt (the group of the group-relative advantage)."""
    temperature: float = 1.0
    """Sampling temperature; log-probabilities are computed at the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0 = off)."""
    max_new_tokens: int = 48
    """Completion length limit; completions that hit it without EOS count as truncated."""


@dataclass
class GateConfig:
    """The gate as one value: a registry name and that family's parameters, written flat in YAML
    (``gate: {name: sigmoid, tau_pos: 10, tau_neg: 12}``). Which parameters exist, and their defaults, is the
    registry's business (``softgate gates list``): a user-registered gate with its own parameter trains from YAML."""

    name: str = "sigmoid"
    """Gate family from ``softgate gates list`` (sigmoid, erf, arctan, softsign, student, clip, identity, ...)."""
    params: dict[str, float] = field(default_factory=dict)
    """The family's parameters (tau_pos/tau_neg for the smooth families, eps_low/eps_high for clip, nu for
    student, ...), written as ``gate.<param>``; unset ones take the registry's default, null unsets one."""

    def spec(self) -> GateSpec:
        """The validated gate value, every parameter filled in."""
        from softgate.gates import GateSpec

        return GateSpec.of(self.name, **self.params)

    def __getattr__(self, key: str) -> float:
        # ``cfg.gate.tau_pos`` keeps working: parameters read like fields (only reached when no field matches).
        params = self.__dict__.get("params", {})
        if key in params:
            return params[key]
        raise AttributeError(f"gate {self.__dict__.get('name')!r} has no parameter {key!r}")


@dataclass
class LossConfig:
    level: Level = "token"
    """Importance ratio per token (the paper), per sequence (GSPO) or sequence value with token gradient."""
    agg: AggMode = "seq-mean-token-mean"
    """Aggregation: the paper's seq-mean-token-mean, token-mean (DAPO) or seq-mean-token-sum-norm (Dr. GRPO)."""
    log_ratio_bound: float = 20.0
    """|log r| is clamped to this before exp; clamped tokens get no gradient and are counted."""
    kl_coef: float = 0.0
    """KL penalty against a frozen reference model (0 = off, as in the paper; > 0 loads a second model copy)."""
    kl_estimator: KLEstimator = "k3"
    """KL estimator for the penalty (Schulman's k1/k2/k3)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient (0 = off)."""


@dataclass
class AlgoConfig:
    advantage: AdvantageEstimator = "std"
    """Group advantage: std-normalized (GRPO), mean-only (Dr. GRPO) or leave-one-out (RLOO)."""
    drop_zero_variance: bool = False
    """Drop groups whose rewards are all equal (their advantage is 0 anyway; saves compute)."""
    num_iterations: int = 2
    """Passes over each rollout batch (the paper: 2). With 1 pass and 1 minibatch every update is on-policy."""
    minibatches: int = 2
    """Optimizer steps per pass over a rollout batch; groups are kept whole inside a minibatch."""
    micro_batch_size: int = 32
    """Sequences per forward/backward pass (gradient accumulation inside a minibatch)."""
    eur_target: float | None = None
    """If set, adapt tau_pos/tau_neg (keeping their ratio) so the Effective Update Ratio tracks this value."""
    eur_rate: float = 2.0
    """Step size of the EUR controller: tau *= exp(eur_rate * (EUR - target)) after each off-policy update."""


@dataclass
class OptimConfig:
    lr: float = 1e-4
    """AdamW learning rate (peak). 1e-4 suits the embedded tiny model; ~1e-6 for 7B models (the paper)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.99
    """AdamW beta2."""
    schedule: Schedule = "constant"
    """Learning-rate schedule after warmup."""
    warmup_steps: int = 0
    """Linear warmup, in optimizer steps."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (global L2 norm); 0 = off."""
    master_weights: bool = True
    """Keep parameters and AdamW state in float32 (mixed precision as torch.amp does it). false = parameters in
    model.compute_dtype (less memory; an AdamW step at lr 1e-6 then mostly rounds away; warns)."""


@dataclass
class EvalConfig:
    every: int = 20
    """Evaluate on the held-out split every N RL steps (0 = only at start and end)."""
    size: int = 200
    """Held-out problems per evaluation (0 = all)."""
    temperature: float = 0.7
    """Sampling temperature for evaluation (the paper: 0.7, one sample per problem)."""
    max_new_tokens: int | None = None
    """Completion limit for evaluation; None = rollout.max_new_tokens."""
    batch_size: int = 64
    """Prompts per generate call during evaluation."""


@dataclass
class LogConfig:
    progress: bool = True
    """Show a progress bar with the key figures."""
    tensorboard: bool = False
    """Also log to TensorBoard (``pip install softgate[tracking]``)."""
    wandb_project: str | None = None
    """Also log to this Weights & Biases project (``pip install softgate[tracking]``)."""
    save_every: int = 25
    """Write a checkpoint every N RL steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""


@dataclass
class GraderConfig:
    timeout_s: float = DEFAULT_TIMEOUT_S
    """Seconds math-verify may spend on one answer; past it the worker is killed and the answer scores 0
    (counted as ``grader/timeouts``)."""
    workers: int = 1
    """math-verify worker processes; the answers of one batch that need it are graded in parallel across them."""
    memory_mb: int = DEFAULT_MEMORY_MB
    """Extra address space (MB) a worker may allocate after start-up (Linux); a runaway computation then fails and
    scores 0 (``grader/errors``). 0 = no cap."""
    symbolic: bool = True
    """Let math-verify decide answers the exact/numeric fast path cannot (tasks with LaTeX answers: math500,
    deepmath). False: fast path only, no worker processes; undecided answers score 0."""
    max_answer_chars: int = MAX_ANSWER_CHARS
    """Extracted answers longer than this score 0 without being parsed (``grader/too_long``)."""


@dataclass
class Config:
    seed: int = 0
    """Seed of everything: model sampling, data order, evaluation sampling."""
    steps: int = 100
    """RL steps: each samples one rollout batch and makes num_iterations x minibatches optimizer steps."""
    output_dir: str = "runs/default"
    """Run directory (metrics.jsonl, checkpoints/, plots/, summary.json)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    grader: GraderConfig = field(default_factory=GraderConfig)


# --------------------------------------------------------------------------------------------------------------
# Loading: YAML file -> nested dict (with line numbers) -> dotted overrides -> typed dataclasses -> validation.


def _yaml_with_lines(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse a YAML mapping and remember the line of every dotted key (for error messages)."""
    text = path.read_text()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = f"{prefix}{key_node.value}"
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key + ".")

    if root is not None:
        walk(root, "")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data, lines


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set gate.tau_pos=5")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a type hint; int -> float is allowed, everything else must match."""
    origin = get_origin(annotation)
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin is not None and type(None) in get_args(annotation):  # Optional[X]
        if value is None:
            return None
        inner = [a for a in get_args(annotation) if a is not type(None)][0]
        return _coerce(value, inner, where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build_gate(data: dict[str, Any], prefix: str, locate) -> GateConfig:
    """``gate:`` is one value: ``name`` plus the family's parameters, flat (or under ``params:``)."""
    name = data.get("name", GateConfig.name)
    if not isinstance(name, str):
        raise ConfigError(f"{locate(prefix + 'name')}{prefix}name: expected a gate name, got {name!r}")
    flat = {k: v for k, v in data.items() if k not in ("name", "params")}
    nested = data.get("params") or {}
    if not isinstance(nested, dict):
        raise ConfigError(f"{locate(prefix + 'params')}{prefix}params: expected a mapping of parameters")
    params: dict[str, float] = {}
    for key, value in {**nested, **flat}.items():
        if value is None:  # null unsets: the family's default applies
            continue
        params[key] = _coerce(value, float, f"{locate(prefix + key)}{prefix}{key}")
    return GateConfig(name=name, params=params)


def _build(cls: type, data: dict[str, Any], prefix: str, locate) -> Any:
    if cls is GateConfig:
        return _build_gate(data, prefix, locate)
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{locate(prefix + key)}unknown key {prefix + key!r}; "
                f"known keys here: {', '.join(sorted(known))}"
            )
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint, dotted = data[f.name], hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{locate(dotted)}{dotted!r} is a section; give it keys, e.g. {dotted}.KEY=...")
            kwargs[f.name] = _build(hint, value, dotted + ".", locate)
        else:
            kwargs[f.name] = _coerce(value, hint, f"{locate(dotted)}{dotted}")
    return cls(**kwargs)


# Old spellings that keep working: old dotted key -> new dotted key (a deprecation warning names both).
RENAMED_KEYS = {"model.dtype": "model.compute_dtype"}


def _apply_renames(data: dict[str, Any], lines: dict[str, int]) -> None:
    import warnings

    for old, new in RENAMED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = data.get(old_section)
        if isinstance(section, dict) and old_key in section:
            warnings.warn(f"config key {old} is now {new} (parameters stay float32; see docs/training.md)",
                          DeprecationWarning, stacklevel=3)
            data.setdefault(new_section, {}).setdefault(new_key, section.pop(old_key))
            if old in lines:
                lines[new] = lines.pop(old)


def config_from_dict(data: dict[str, Any], *, source: str | None = None, lines: dict[str, int] | None = None) -> Config:
    """Build and validate a :class:`Config` from a nested dict."""
    lines = lines or {}
    _apply_renames(data, lines)

    def locate(key: str) -> str:
        if source is None:
            return ""
        return f"{source}:{lines[key]}: " if key in lines else f"{source}: "

    cfg = _build(Config, data, "", locate)
    validate(cfg, locate)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    source = None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data, lines = _yaml_with_lines(path)
        source = str(path)
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_dotted(data, key, value)
        lines.pop(key, None)  # the value no longer comes from the file
    return config_from_dict(data, source=source, lines=lines)


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain data, in the spelling users write (the gate's parameters flat under ``gate``)."""
    data = dataclasses.asdict(cfg)
    gate = data.pop("gate")
    data["gate"] = {"name": gate["name"], **gate["params"]}
    return {key: data[key] for key in (f.name for f in dataclasses.fields(cfg))}


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# --------------------------------------------------------------------------------------------------------------
# Validation: one check per rule, each error naming the key.


def validate(cfg: Config, locate=lambda key: "") -> None:
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{locate(key)}{key}: {message}")

    def positive(key: str, value: float) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            fail(key, f"must be > 0, got {value!r}")

    from softgate import gates  # light import: maths only

    known = [*gates.names(), *gates.aliases()]
    if cfg.gate.name not in known:
        fail("gate.name", f"unknown gate {cfg.gate.name!r}; known gates: {', '.join(known)}")
    accepted = gates.defaults(cfg.gate.name)
    for key, value in cfg.gate.params.items():
        if key not in accepted:
            fail(f"gate.{key}", f"gate {cfg.gate.name!r} has no parameter {key} (set to {value:g}); it accepts "
                 f"{', '.join(accepted) or 'none'} (set gate.{key}=null to drop it)")
    try:
        spec = cfg.gate.spec()
    except (ValueError, TypeError) as err:
        fail("gate", str(err))
    # From here on the config holds the resolved gate: canonical name, every parameter (what config.yaml saves).
    cfg.gate.name, cfg.gate.params = spec.name, dict(spec.params)

    positive("steps", cfg.steps)
    for key in ("prompts_per_step", "num_generations", "max_new_tokens"):
        positive(f"rollout.{key}", getattr(cfg.rollout, key))
    if cfg.rollout.temperature <= 0:
        fail("rollout.temperature", f"must be > 0, got {cfg.rollout.temperature}")
    if not 0 < cfg.rollout.top_p <= 1:
        fail("rollout.top_p", f"must be in (0, 1], got {cfg.rollout.top_p}")
    if cfg.algo.advantage in ("std", "rloo") and cfg.rollout.num_generations < 2:
        fail("rollout.num_generations", f"must be >= 2 with algo.advantage={cfg.algo.advantage!r} "
             "(a group of one has no spread to normalize by)")
    for key in ("num_iterations", "minibatches", "micro_batch_size"):
        positive(f"algo.{key}", getattr(cfg.algo, key))
    if cfg.rollout.prompts_per_step % cfg.algo.minibatches:
        fail("algo.minibatches", f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} is not divisible by "
             f"algo.minibatches={cfg.algo.minibatches} (minibatches keep groups whole)")
    minibatch_seqs = cfg.rollout.prompts_per_step // cfg.algo.minibatches * cfg.rollout.num_generations
    if minibatch_seqs % cfg.algo.micro_batch_size:
        fail("algo.micro_batch_size", f"a minibatch holds {minibatch_seqs} sequences, not divisible by "
             f"algo.micro_batch_size={cfg.algo.micro_batch_size}")
    if cfg.algo.eur_target is not None and not 0 < cfg.algo.eur_target < 1:
        fail("algo.eur_target", f"must be in (0, 1), got {cfg.algo.eur_target}")
    positive("algo.eur_rate", cfg.algo.eur_rate)
    positive("optim.lr", cfg.optim.lr)
    positive("loss.log_ratio_bound", cfg.loss.log_ratio_bound)
    for key in ("kl_coef", "entropy_coef"):
        if getattr(cfg.loss, key) < 0:
            fail(f"loss.{key}", f"must be >= 0, got {getattr(cfg.loss, key)}")
    if cfg.optim.warmup_steps < 0:
        fail("optim.warmup_steps", f"must be >= 0, got {cfg.optim.warmup_steps}")
    if cfg.optim.max_grad_norm < 0:
        fail("optim.max_grad_norm", f"must be >= 0, got {cfg.optim.max_grad_norm}")
    if cfg.eval.every < 0 or cfg.eval.size < 0:
        fail("eval", "every and size must be >= 0")
    positive("eval.temperature", cfg.eval.temperature)
    positive("eval.batch_size", cfg.eval.batch_size)
    for i, entry in enumerate(cfg.task.train_mix or []):
        if not isinstance(entry, dict) or not {"task", "source"} <= entry.keys() or \
                set(entry) - {"task", "source", "weight"}:
            fail(f"task.train_mix[{i}]", f"expected {{task: NAME, source: FILE|hf, weight: W}}, got {entry!r}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            fail(f"task.train_mix[{i}].weight", f"must be a number >= 0, got {weight!r}")
    for key in ("train_file", "test_file"):
        value = getattr(cfg.task, key)
        if value and _looks_like_path(value) and not Path(value).exists():
            fail(f"task.{key}", f"file {value} does not exist")
    if cfg.model.threads < 0:
        fail("model.threads", f"must be >= 0, got {cfg.model.threads}")
    from softgate.device import check_device_name

    try:
        check_device_name(cfg.model.device)
    except ValueError as err:
        fail("model.device", str(err))
    positive("grader.timeout_s", cfg.grader.timeout_s)
    positive("grader.workers", cfg.grader.workers)
    positive("grader.max_answer_chars", cfg.grader.max_answer_chars)
    if cfg.grader.memory_mb < 0:
        fail("grader.memory_mb", f"must be >= 0 (0 = no cap), got {cfg.grader.memory_mb}")


def _looks_like_path(value: str) -> bool:
    """Local files end in a data suffix; anything else may be a hub dataset name."""
    return value.endswith((".jsonl", ".json", ".parquet")) or value.startswith((".", "/"))


# --------------------------------------------------------------------------------------------------------------
# Reference documentation, generated from this file so that docs/config.md cannot drift from the code.


def field_docs() -> dict[str, dict[str, str]]:
    """``{section: {field: docstring}}`` read from the string literal under each dataclass field in this file."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(__import__(__name__, fromlist=["_"])))
    docs: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields: dict[str, str] = {}
        body = node.body
        for item, nxt in zip(body, body[1:] + [None]):
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                doc = ""
                if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                    doc = " ".join(nxt.value.value.split())
                fields[item.target.id] = doc
        docs[node.name] = fields
    return docs


def reference_markdown() -> str:
    """Markdown table of every config key: dotted name, default, meaning (the content of docs/config.md)."""
    docs = field_docs()
    lines = ["# Config reference", "",
             "Every key of `softgate train` (YAML or `--set key=value`), its default (the embedded demo) and its "
             "meaning. Generated from `softgate/config.py` by `softgate.config.reference_markdown()`; a test keeps "
             "this file equal to it.", ""]

    def section(obj, prefix: str, title: str) -> None:
        lines.extend([f"## {title}", "", "| key | default | meaning |", "|---|---|---|"])
        nested = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                nested.append((value, f"{prefix}{f.name}."))
                continue
            meaning = docs.get(type(obj).__name__, {}).get(f.name, "").replace("|", "\\|")
            if isinstance(obj, GateConfig) and f.name == "params":
                lines.extend(_gate_param_rows(prefix))
                continue
            lines.append(f"| `{prefix}{f.name}` | `{value!r}` | {meaning} |")
        lines.append("")
        for value, sub in nested:
            section(value, sub, f"`{sub[:-1]}`")

    section(Config(), "", "Top level")
    return "\n".join(lines)


def _gate_param_rows(prefix: str) -> list[str]:
    """One row per parameter of the registered gate families, with each family's default (the registry's)."""
    from softgate import gates

    families: dict[str, list[str]] = {}
    for name in gates.names():
        for key, default in gates.defaults(name).items():
            families.setdefault(key, []).append(f"{name} {default:g}")
    return [f"| `{prefix}{key}` | family default | parameter of: {', '.join(where)} |"
            for key, where in families.items()]
