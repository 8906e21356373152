"""Loading a config: YAML file (with line numbers) -> dotted ``--set`` overrides -> typed dataclasses -> validation.

Errors name the key and where its value came from: ``FILE:LINE`` for a YAML file, ``--set KEY=VALUE`` for an
override, nothing for a default. ``load_resume_config`` is the config of a resumed run (its saved config.yaml, with
only the changes the user allows).
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
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
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
        if node.get(part) is None:  # a missing section, or an optional one that is off (``model.lora: null``)
            node[part] = {}
        child = node[part]
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


def section_type(hint: Any) -> type | None:
    """The dataclass of a section field: its type, or X of an optional section ``X | None`` (null = off)."""
    if dataclasses.is_dataclass(hint):
        return hint
    inner = [a for a in get_args(hint) if a is not type(None)]
    if type(None) in get_args(hint) and len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
        return inner[0]
    return None


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
        section = section_type(hint)
        if section is not None and value is None and section is not hint:  # an optional section, switched off
            kwargs[f.name] = None
        elif section is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{locate(dotted)}{dotted!r} is a section; give it keys, e.g. {dotted}.KEY=...")
            kwargs[f.name] = _build(section, value, dotted + ".", locate)
        else:
            kwargs[f.name] = _coerce(value, hint, f"{locate(dotted)}{dotted}")
    return cls(**kwargs)


# Old spellings that keep working: old dotted key -> new dotted key (a deprecation warning names both).
RENAMED_KEYS = {"model.dtype": "model.compute_dtype"}


def _apply_renames(data: dict[str, Any], origins: dict[str, str]) -> None:
    import warnings

    for old, new in RENAMED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = data.get(old_section)
        if isinstance(section, dict) and old_key in section:
            warnings.warn(f"config key {old} is now {new} (parameters stay float32; see docs/training.md)",
                          DeprecationWarning, stacklevel=3)
            data.setdefault(new_section, {}).setdefault(new_key, section.pop(old_key))
            if old in origins:
                origins[new] = origins.pop(old)


def _locator(origins: dict[str, str]):
    """``locate(key)``: where the value of ``key`` came from, as an error prefix (``"FILE:LINE: "`` or
    ``"--set KEY=VALUE: "``), or ``""`` for a default. Among the key itself, the keys inside it (a section) and a
    section given whole with ``--set 'gate={...}'``, the last one given wins (``origins`` is in the order given)."""

    def locate(key: str) -> str:
        found = [where for k, where in origins.items()
                 if k == key or k.startswith(key + ".") or (key.startswith(k + ".") and where.startswith("--set"))]
        return f"{found[-1]}: " if found else ""

    return locate


def config_from_dict(data: dict[str, Any], *, source: str | None = None, lines: dict[str, int] | None = None,
                     origins: dict[str, str] | None = None) -> Config:
    """Build and validate a :class:`Config` from a nested dict. Errors are located by ``origins`` (dotted key ->
    ``"FILE:LINE"`` or ``"--set KEY=VALUE"``), or by ``source`` and its ``lines`` (dotted key -> line)."""
    where = {key: f"{source}:{line}" for key, line in (lines or {}).items()} if source else {}
    where.update(origins or {})
    _apply_renames(data, where)
    locate = _locator(where)
    cfg = _build(Config, data, "", locate)
    validate(cfg, locate)
    return cfg


def _read_layers(files: list[Path], overrides: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """YAML files merged in order, then ``key=value`` overrides; returns the data and each dotted key's origin."""
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for path in files:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        layer, lines = _yaml_with_lines(path)
        _merge(data, layer)
        origins.update({key: f"{path}:{line}" for key, line in lines.items()})
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(data, key, value)
        _forget(origins, [key])  # the value (and anything under it) no longer comes from a file
        origins[key] = f"--set {item}"
    return data, origins


def _forget(origins: dict[str, str], keys) -> None:
    for key in list(keys):
        for known in [k for k in origins if k == key or k.startswith(key + ".")]:
            del origins[known]


def _merge(base: dict[str, Any], layer: dict[str, Any]) -> None:
    """Deep-merge ``layer`` into ``base`` (sections merge key by key; values replace)."""
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    data, origins = _read_layers([Path(path)] if path is not None else [], list(overrides or []))
    return config_from_dict(data, origins=origins)


# Keys a resumed run may change without --allow-change: its length, evaluation, logging and resources. A trailing
# ".*" allows a whole section. Anything else would make the resumed run a different run than the saved one.
RESUME_MAY_CHANGE = ("steps", "output_dir", "eval.*", "log.*", "model.threads", "grader.workers")


def load_resume_config(saved: str | Path, path: str | Path | None = None, overrides: list[str] | None = None,
                       allow: list[str] | None = None) -> tuple[Config, list[str]]:
    """The config of a run to resume: its saved ``config.yaml``, with the config file ``path`` and ``overrides``
    on top. Refuses (``ConfigError`` naming the keys) when they change a key that is neither in
    ``RESUME_MAY_CHANGE`` nor in ``allow``; returns the config and the changed keys as ``"key: old -> new"``."""
    saved = Path(saved)
    base = load_config(saved)
    files = [saved] + ([Path(path)] if path is not None else [])
    data, origins = _read_layers(files, list(overrides or []))
    cfg = config_from_dict(data, origins=origins)
    before, after = _flatten(to_dict(base)), _flatten(to_dict(cfg))
    changed = [key for key in dict.fromkeys([*before, *after]) if before.get(key) != after.get(key)]
    allowed = [*RESUME_MAY_CHANGE, *(allow or [])]
    refused = [key for key in changed if not any(_matches(key, pattern) for pattern in allowed)]
    if refused:
        details = ", ".join(f"{key} ({before.get(key)!r} -> {after.get(key)!r})" for key in refused)
        raise ConfigError(f"--resume: {details} would change the run saved in {saved}; resume without changing "
                          f"{'it' if len(refused) == 1 else 'them'}, or pass --allow-change "
                          f"{' --allow-change '.join(refused)} if the change is meant")
    return cfg, [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in changed]


def _matches(key: str, pattern: str) -> bool:
    """``pattern`` is a dotted key, or a section followed by ``.*`` (every key in it)."""
    return key == pattern or (pattern.endswith(".*") and key.startswith(pattern[:-1])) or key.startswith(pattern + ".")


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "train_mix":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain data, in the spelling users write (the gate's parameters flat under ``gate``)."""
    data = dataclasses.asdict(cfg)
    gate = data.pop("gate")
    data["gate"] = {"name": gate["name"], **gate["params"]}
    return {key: data[key] for key in (f.name for f in dataclasses.fields(cfg))}


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
