"""Reference documentation generated from the schema, so that docs/config.md cannot drift from the code."""

from __future__ import annotations

import dataclasses
import typing

from softgate.config import schema
from softgate.config.loading import section_type
from softgate.config.schema import Config, GateConfig


def field_docs() -> dict[str, dict[str, str]]:
    """``{section: {field: docstring}}`` read from the string literal under each dataclass field in this file."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(schema))
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
             "Every key of `softgate train` and `softgate sft` (YAML or `--set key=value`), its default (the embedded demo) and its "
             "meaning. Generated from `softgate/config/schema.py` by `softgate.config.reference_markdown()`; a test keeps "
             "this file equal to it.", ""]

    def section(obj, prefix: str, title: str) -> None:
        lines.extend([f"## {title}", "", "| key | default | meaning |", "|---|---|---|"])
        nested = []
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                nested.append((value, f"{prefix}{f.name}."))
                continue
            optional = section_type(hints[f.name])
            if optional is not None:  # an optional section (null = off): its row, then its keys' defaults when on
                nested.append((optional(), f"{prefix}{f.name}."))
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
