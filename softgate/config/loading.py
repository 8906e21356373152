"""Loading a config: YAML file (with line numbers) -> dotted ``--set`` overrides -> typed dataclasses -> validation.

Errors name the key, and the file and line when the value came from a YAML file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from softgate.config.schema import Config, ConfigError, GateConfig
from softgate.config.validation import validate


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
