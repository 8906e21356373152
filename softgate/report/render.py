"""Rendering a report: tables as Markdown and HTML, the summary.md page and the self-contained report.html."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from softgate.report import Report

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}.note{color:#555;font-size:0.85em}
figure{margin:1em 0}figcaption{font-size:0.85em;color:#555}"""


@dataclass
class Table:
    """A table ready to render: header cells and rows of strings, plus a note under it."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""

    def markdown(self) -> str:
        def esc(s: str) -> str:
            return s.replace("|", "\\|")

        lines = [f"### {self.title}", ""]
        if self.rows:
            lines.append("| " + " | ".join(map(esc, self.columns)) + " |")
            lines.append("|" + "|".join("---" for _ in self.columns) + "|")
            lines += ["| " + " | ".join(map(esc, row)) + " |" for row in self.rows]
        else:
            lines.append("(no data)")
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        parts = [f"<h3>{html.escape(self.title)}</h3>"]
        if self.rows:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            parts.append("<p>(no data)</p>")
        if self.note:
            parts.append(f"<p class='note'>{html.escape(self.note)}</p>")
        return "\n".join(parts)


def _intro(report: Report) -> str:
    return f"Runs: {len(report.runs)} in {len(report.variants)} variant(s), from "


def markdown_page(report: Report, sources: Sequence[str]) -> str:
    """summary.md: notes, tables, and the figures linked by relative path."""
    lines = ["# softgate report", "", _intro(report) + ", ".join(f"`{s}`" for s in sources), ""]
    lines += [f"- {note}" for note in report.notes]
    if report.notes:
        lines.append("")
    lines += [table.markdown() for table in report.tables]
    lines.append("## Figures\n")
    for name, caption in report.figures:
        lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def html_page(report: Report, out: Path, sources: Sequence[str]) -> str:
    """report.html: the same content as one page, the figures (read from ``out``) embedded as base64."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>softgate report</title>",
             f"<style>{_CSS}</style></head><body>", "<h1>softgate report</h1>",
             f"<p>{_intro(report)}" + ", ".join(f"<code>{html.escape(s)}</code>" for s in sources) + "</p>"]
    if report.notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    parts += [t.html() for t in report.tables]
    parts.append("<h2>Figures</h2>")
    for name, caption in report.figures:
        data = base64.b64encode((out / name).read_bytes()).decode("ascii")
        anchor = html.escape(Path(name).stem)  # report.html#stability_map links to a figure
        parts.append(f"<figure id='{anchor}'><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
