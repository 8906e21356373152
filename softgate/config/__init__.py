"""Typed run configuration: dataclasses, YAML loading with ``--set key=value`` overrides, and validation.

Every hyperparameter has one home here and one docstring-comment. Errors name the key, and the file and line
when the value came from a YAML file.

    cfg = load_config("configs/embedded.yaml", overrides=["gate.name=erf", "seed=1"])
"""

from softgate.config.loading import RENAMED_KEYS, config_from_dict, load_config, save_config, to_dict
from softgate.config.reference import field_docs, reference_markdown
from softgate.config.schema import (
    AlgoConfig,
    Config,
    ConfigError,
    EvalConfig,
    GateConfig,
    GraderConfig,
    LogConfig,
    LoraConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RolloutConfig,
    SftConfig,
    TaskConfig,
)
from softgate.config.validation import validate

__all__ = [
    "RENAMED_KEYS", "AlgoConfig", "Config", "ConfigError", "EvalConfig", "GateConfig", "GraderConfig", "LogConfig",
    "LoraConfig", "LossConfig", "ModelConfig", "OptimConfig", "RolloutConfig", "SftConfig", "TaskConfig",
    "config_from_dict", "field_docs", "load_config", "reference_markdown", "save_config", "to_dict", "validate",
]
