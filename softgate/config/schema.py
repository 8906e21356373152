"""The config schema: one dataclass per section, each field with its default and a docstring under it.

Every hyperparameter has one home here. The docstrings are the documentation: ``softgate train --help`` and
docs/config.md are generated from them (``softgate.config.reference``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from softgate.choices import (AdvantageEstimator, AggMode, Backend, DType, Engine, KLEstimator, Level,
                              LogprobImpl, MinibatchSplit, Schedule)
from softgate.grading import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, MAX_ANSWER_CHARS

if TYPE_CHECKING:  # softgate.gates imports torch; the config stays light so that --help is fast
    from softgate.gates import GateSpec


class ConfigError(ValueError):
    """A bad configuration value; the message names the key (and file:line when known)."""


@dataclass
class LoraConfig:
    """Low-rank adapters through peft (``pip install 'softgate[lora]'``): the base weights stay frozen and each
    target layer W gets a trainable update (alpha / r) B A, B initialised to 0 so training starts at the base model."""

    r: int = 16
    """Rank of the update B A (B: out x r, A: r x in)."""
    alpha: float = 32.0
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter's input. `softgate train` sets it to 0 when model.disable_dropout is on (the policy
    that sampled must be the one updated); `softgate sft` uses it as given."""
    target_modules: str | list[str] = "all-linear"
    """Layers that get an adapter: a list of module names (e.g. [q_proj, v_proj]) or peft's "all-linear" (every
    linear layer except the output head)."""


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
    logprob_impl: LogprobImpl = "auto"
    """How token log-probs are taken: logits (the model's [N, T, V] logits, reduced in chunks), hidden (the LM head
    applied to the last hidden state one tile at a time and recomputed in backward: no [N, T, V] tensor, ~1/13 of
    the memory at V = 151,936) or auto (hidden from a vocabulary of 32,768 on, when the LM head is a plain linear
    layer). Same values and gradients either way."""
    lora: LoraConfig | None = None
    """Train LoRA adapters instead of every weight (a mapping of the model.lora.* keys, e.g.
    ``lora: {r: 16, alpha: 32}``); null = full fine-tuning. Checkpoints then hold the adapter only, the KL reference
    is the base model with the adapter switched off, and `softgate export RUN --merge` writes a plain model."""


@dataclass
class TaskConfig:
    name: str = "synthetic"
    """Task name: synthetic, gsm8k, math500, aime, deepmath, or fields (any question/answer file; see
    ``softgate.tasks``)."""
    train_file: str | None = None
    """Local JSONL/JSON/Parquet training file (or a hub dataset name) for file-based tasks."""
    test_file: str | None = None
    """Local held-out file for evaluation (file-based tasks)."""
    train_mix: list[dict[str, Any]] | None = None
    """Train on a weighted mix of tasks instead of ``train_file``: a list of ``{task: NAME, source: FILE|hf,
    weight: W}``. Each completion is graded by its own task; held-out evaluation uses ``name``/``test_file``."""
    difficulty: int = 1
    """Synthetic task only: difficulty level of the generated problems (1-3; 4 = long reasoning, worked steps in
    <think>, ~55-token completions: raise rollout.max_new_tokens to ~80). See docs/embedded.md."""
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
    """Optimizer steps per pass over a rollout batch (cut as algo.minibatch_split says)."""
    minibatch_split: MinibatchSplit = "groups"
    """groups: minibatches of whole groups, the first pass in order, later passes in a new random order of groups.
    rows: TRL GRPOTrainer's: the rows shuffled once per rollout, the same minibatches on every pass (each holds part
    of every group)."""
    micro_batch_size: int = 32
    """Sequences per forward/backward pass (gradient accumulation inside a minibatch)."""
    eur_target: float | None = None
    """If set, adapt tau_pos/tau_neg (keeping their ratio) so the Effective Update Ratio tracks this value."""
    eur_rate: float = 2.0
    """Step size of the EUR controller: tau *= exp(eur_rate * (EUR - target)) after each off-policy update."""
    staleness: int = 0
    """k: sample each rollout (and compute its old log-probs) with the policy as it was k optimizer steps earlier,
    as an asynchronous pipeline with lag k does; fewer in the first k steps of a run (the start policy is the
    oldest there is). Costs k CPU copies of the weights and a second model instance. 0 = the current policy."""


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
    samples_every: int = 0
    """Every N RL steps, keep 4 completions of the last update (one group's rows) with their per-token ratio r,
    gate weight f'(r) and advantage in ``samples.jsonl``, for ``softgate inspect`` (0 = off)."""


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
class SftConfig:
    """`softgate sft`: a supervised cold start on the task's format before RL (TRL's SFTTrainer). Its data are
    task.train_size training problems of the task (the synthetic task: they carry target completions), rendered
    with the task's prompt; the loss is on the target completion + EOS only."""

    steps: int = 50
    """Optimizer steps."""
    lr: float = 5e-5
    """Peak AdamW learning rate (warmup, then sft.schedule). LoRA usually wants about 10x more than full fine-tuning."""
    schedule: Schedule = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_steps: int = 5
    """Linear warmup, in optimizer steps."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    batch_size: int = 8
    """Examples per optimizer step."""
    max_length: int = 512
    """Longest prompt + target in tokens; a longer example is an error naming it (truncating a target would teach
    the model to stop without EOS)."""
    log_every: int = 10
    """Print the training loss every N steps (into sft.json's log too)."""


@dataclass
class Config:
    seed: int = 0
    """Seed of everything: model sampling, data order, evaluation sampling."""
    steps: int = 100
    """RL steps: each samples one rollout batch and makes num_iterations x minibatches optimizer steps."""
    output_dir: str = "runs/default"
    """Run directory (metrics.jsonl, checkpoints/, plots/, summary.json)."""
    engine: Engine = "native"
    """Who runs the loop: ``native`` (softgate's own trainer) or ``trl`` (TRL's GRPOTrainer with softgate's loss, under
    accelerate; ``softgate train --processes N`` for several processes). Same run directory either way; the keys the
    trl engine cannot honour are refused by name (docs/integrations.md)."""
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
    sft: SftConfig = field(default_factory=SftConfig)
