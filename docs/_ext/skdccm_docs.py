"""Sphinx helpers for the skdccm documentation.

Directives and roles, so that the documentation is generated from the code where it can
be and builds (with ``-W``) whatever optional parts of the project exist yet:

``.. preset-table:: skdccm.dccm.PRESETS``
    A table of every preset's settings, read from the dict (of dicts or dataclasses) at
    build time, with each parameter's description taken from a class's numpydoc docstring
    (``:described-by:``) and the cells that differ from the reference preset
    (``:reference:``) in bold.

``:preset-value:`skdccm.dccm.PRESETS default max_iter```
    One preset's value, read from the code at build time (as the tables show it), so that
    prose never states a default the code has since changed.

``.. optional-module:: skdccm.crlc``
    Renders its content only when the module (and the ``:needs:`` attribute) imports;
    otherwise a short note. Used for parts of the API added by other issues.

``.. optional-figure:: _static/suite_results.png``
    A figure (the options and caption of ``.. figure::``) whose image is generated outside
    the build and may not be committed yet: when the file is missing, a note saying so
    (nothing with ``:quiet:``).

``.. markdown-include:: ../BENCHMARKS.md``
    Renders a small Markdown subset (headings, paragraphs, lists, pipe tables, fenced code,
    images, inline code, bold and links) built directly as docutils nodes, so that no
    character of the Markdown can break the reStructuredText parser. When the file is
    missing, the directive's content is rendered instead.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.parsers.rst.directives.images import Figure
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles


def import_object(path: str) -> Any:
    """``"package.module.NAME"`` -> the object (module attributes only)."""
    module_name, _, attribute = path.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


# ----------------------------------------------------------------------------------------
# preset tables
# ----------------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """How a preset value reads in the table (stable, as Python would write it)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        inner = ", ".join(format_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def parameter_summaries(cls: type | None) -> dict[str, str]:
    """First sentence of each parameter's (or attribute's) description in a numpydoc
    class docstring."""
    if cls is None:
        return {}
    from numpydoc.docscrape import NumpyDocString

    summaries = {}
    doc = NumpyDocString(cls.__doc__ or "")
    for param in [*doc["Parameters"], *doc["Attributes"]]:
        text = " ".join(" ".join(param.desc).split())
        # The first sentence: a full stop followed by a capital ("Eq. 15" does not end one).
        first = re.split(r"(?<=\.)\s+(?=[A-Z])", text, maxsplit=1)[0]
        for name in param.name.split(","):
            summaries[name.strip()] = first
    return summaries


def as_settings(value: Any) -> dict[str, Any]:
    """A preset as a dict: dicts as they are, dataclasses by field, None as no settings."""
    if value is None:
        return {}
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return dict(value)


def preset_rows(presets: dict[str, Any], reference: str | None = None,
                summaries: dict[str, str] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the preset table: one row per parameter, one column per preset.

    Presets may be dicts or dataclass instances (None: no settings). Parameters are listed
    in the order of the first preset that has them; a preset lacking one shows an em dash.
    Cells are reStructuredText: values as literals, those differing from ``reference``'s
    through the ``preset-diff`` role (bold literals).
    """
    presets = {name: as_settings(value) for name, value in presets.items()}
    names = list(presets)
    keys: list[str] = []
    for settings in presets.values():
        keys += [k for k in settings if k not in keys]
    header = ["parameter", *names] + (["meaning"] if summaries is not None else [])
    rows = []
    for key in keys:
        row = [f"``{key}``"]
        for name in names:
            if key not in presets[name]:
                row.append("\N{EM DASH}")
                continue
            cell = f"``{format_value(presets[name][key])}``"
            differs = (reference is not None and name != reference
                       and presets[reference].get(key, object()) != presets[name][key])
            row.append(f":preset-diff:`{format_value(presets[name][key])}`" if differs
                       else cell)
        if summaries is not None:
            row.append(summaries.get(key, ""))
        rows.append(row)
    return header, rows


class PresetTable(SphinxDirective):
    """``.. preset-table:: module.PRESETS`` (see the module docstring)."""

    required_arguments = 1
    option_spec = {  # noqa: RUF012 (docutils API)
        "described-by": directives.unchanged,
        "reference": directives.unchanged,
        "name": directives.unchanged,
        "caption": directives.unchanged,
    }

    def run(self) -> list[nodes.Node]:
        try:
            presets = import_object(self.arguments[0])
        except (ImportError, AttributeError):
            return [_note(f"{self.arguments[0]} is not available in this build.")]
        described_by = None
        if "described-by" in self.options:
            described_by = import_object(self.options["described-by"])
        reference = self.options.get("reference")
        header, rows = preset_rows(presets, reference, parameter_summaries(described_by)
                                   if described_by is not None else None)
        lines = [f".. list-table:: {self.options.get('caption', '')}".rstrip(),
                 "   :header-rows: 1", "   :class: preset-table"]
        if "name" in self.options:
            lines.append(f"   :name: {self.options['name']}")
        lines.append("")
        for row in [header, *rows]:
            lines.append(f"   * - {_escape_cell(row[0])}")
            lines += [f"     - {_escape_cell(cell)}" for cell in row[1:]]
        container = nodes.container()
        self.state.nested_parse(_string_list(lines, self.get_source_info()), 0, container)
        return container.children


def preset_diff_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """``:preset-diff:`value``` -> the value as a bold literal (a differing preset value)."""
    return [nodes.strong("", "", nodes.literal(text, text), classes=["preset-diff"])], []


def preset_value_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """``:preset-value:`skdccm.dccm.PRESETS default max_iter``` -> ``25`` (from the code)."""
    try:
        path, preset, key = text.split()
        value = as_settings(import_object(path)[preset])[key]
    except (ValueError, ImportError, AttributeError, KeyError) as exc:
        message = inliner.reporter.error(
            f"preset-value {text!r}: expected 'module.PRESETS preset parameter' naming an "
            f"existing value ({exc!r})", line=lineno)
        return [inliner.problematic(rawtext, rawtext, message)], [message]
    shown = format_value(value)
    return [nodes.literal(rawtext, shown)], []


def _escape_cell(text: str) -> str:
    # A cell is one line of reStructuredText; an empty one needs a placeholder.
    return text.replace("\n", " ") or "\\"


# ----------------------------------------------------------------------------------------
# optional modules
# ----------------------------------------------------------------------------------------


class OptionalModule(SphinxDirective):
    """Content rendered only when ``module`` (and ``:needs:`` in it) can be imported."""

    required_arguments = 1
    has_content = True
    option_spec = {"needs": directives.unchanged}  # noqa: RUF012

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        try:
            module = importlib.import_module(name)
            for attribute in self.options.get("needs", "").split():
                getattr(module, attribute)
        except (ImportError, AttributeError):
            return [_note(f"{name} is not part of this version of skdccm.")]
        container = nodes.container()
        nested_parse_with_titles(self.state, self.content, container)
        return container.children


# ----------------------------------------------------------------------------------------
# optional figures
# ----------------------------------------------------------------------------------------


class OptionalFigure(Figure):
    """``.. figure::`` when its image exists; otherwise a note naming the missing file, or
    nothing with the ``:quiet:`` flag."""

    option_spec = {**Figure.option_spec, "quiet": directives.flag}  # noqa: RUF012

    def run(self) -> list[nodes.Node]:
        env = self.state.document.settings.env
        source_dir = Path(env.doc2path(env.docname)).parent
        quiet = "quiet" in self.options
        self.options.pop("quiet", None)
        if not (source_dir / self.arguments[0]).is_file():
            return [] if quiet else [_note(f"(figure {self.arguments[0]} not generated yet)")]
        return super().run()


# ----------------------------------------------------------------------------------------
# Markdown include
# ----------------------------------------------------------------------------------------


class MarkdownInclude(SphinxDirective):
    """Render a Markdown file (a small subset) or, when it is missing, the content."""

    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        source_dir = Path(self.env.doc2path(self.env.docname)).parent
        path = (source_dir / self.arguments[0]).resolve()
        if not path.is_file():
            container = nodes.container()
            nested_parse_with_titles(self.state, self.content, container)
            return container.children
        self.env.note_dependency(str(path))
        return markdown_to_nodes(path.read_text(encoding="utf-8"), path.parent,
                                 Path(self.env.srcdir))


_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*|!?\[([^\]]*)\]\(([^)\s]+)\)")


def inline_nodes(text: str) -> list[nodes.Node]:
    """``code``, **bold** and [links](url) of one line of Markdown, as docutils nodes."""
    out: list[nodes.Node] = []
    position = 0
    for match in _INLINE.finditer(text):
        if match.start() > position:
            out.append(nodes.Text(text[position:match.start()]))
        code, bold, label, url = match.groups()
        if code is not None:
            out.append(nodes.literal(code, code))
        elif bold is not None:
            out.append(nodes.strong(bold, bold))
        elif url.startswith(("http://", "https://")):
            out.append(nodes.reference(label, label, refuri=url))
        else:  # a link to a file of the repository: keep the words
            out.append(nodes.Text(label))
        position = match.end()
    if position < len(text):
        out.append(nodes.Text(text[position:]))
    return out


def _table(rows: list[list[str]]) -> nodes.table:
    n_cols = max(len(r) for r in rows)
    table = nodes.table(classes=["markdown-table"])
    group = nodes.tgroup(cols=n_cols)
    table += group
    group += [nodes.colspec(colwidth=1) for _ in range(n_cols)]
    for part, part_rows in ((nodes.thead(), rows[:1]), (nodes.tbody(), rows[1:])):
        for cells in part_rows:
            row = nodes.row()
            for cell in cells + [""] * (n_cols - len(cells)):
                entry = nodes.entry()
                entry += nodes.paragraph("", "", *inline_nodes(cell))
                row += entry
            part += row
        group += part
    return table


def _split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def markdown_to_nodes(text: str, base: Path, srcdir: Path) -> list[nodes.Node]:
    """Docutils nodes for a Markdown document (the subset that benchmark reports use).

    Images are kept when the file exists (paths relative to ``base``); a missing image
    becomes a note rather than a build warning.
    """
    out: list[nodes.Node] = []
    lines = text.splitlines()
    i = 0
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            out.append(nodes.paragraph("", "", *inline_nodes(" ".join(paragraph))))
            paragraph.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            language = stripped[3:].strip() or "text"
            block = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            code = "\n".join(block)
            literal = nodes.literal_block(code, code)
            literal["language"] = language
            out.append(literal)
        elif not stripped:
            flush()
        elif stripped.startswith("#"):
            flush()
            title = stripped.lstrip("#").strip()
            out.append(nodes.rubric("", "", *inline_nodes(title)))
        elif stripped.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = _split_row(lines[i])
                if not all(re.fullmatch(r":?-{2,}:?", c) for c in cells if c):
                    rows.append(cells)
                i += 1
            out.append(_table(rows))
            continue
        elif re.match(r"[-*] ", stripped):
            flush()
            bullets = nodes.bullet_list()
            while i < len(lines) and re.match(r"\s*[-*] ", lines[i]):
                item_text = re.sub(r"^\s*[-*] ", "", lines[i])
                i += 1
                while i < len(lines) and lines[i].startswith("  ") and lines[i].strip() \
                        and not re.match(r"\s*[-*] ", lines[i]):
                    item_text += " " + lines[i].strip()
                    i += 1
                item = nodes.list_item()
                item += nodes.paragraph("", "", *inline_nodes(item_text))
                bullets += item
            out.append(bullets)
            continue
        elif re.fullmatch(r"!\[[^\]]*\]\([^)\s]+\)", stripped):
            flush()
            alt, target = re.fullmatch(r"!\[([^\]]*)\]\(([^)\s]+)\)", stripped).groups()
            image_path = (base / target).resolve()
            if image_path.is_file():
                # Sphinx resolves "/path" against the source directory.
                relative = Path("/") / Path(os.path.relpath(image_path, srcdir))
                out.append(nodes.image(uri=relative.as_posix(), alt=alt))
            else:
                out.append(_note(f"(image {target} not generated yet)"))
        else:
            paragraph.append(stripped)
        i += 1
    flush()
    return out


# ----------------------------------------------------------------------------------------


def _note(text: str) -> nodes.Node:
    note = nodes.note()
    note += nodes.paragraph(text, text)
    return note


def _string_list(lines: list[str], source_info: tuple[str, int]):
    from docutils.statemachine import StringList

    source, line = source_info
    return StringList(lines, source=source, parent_offset=line)


def setup(app) -> dict[str, Any]:
    app.add_role("preset-diff", preset_diff_role)
    app.add_role("preset-value", preset_value_role)
    app.add_directive("preset-table", PresetTable)
    app.add_directive("optional-module", OptionalModule)
    app.add_directive("markdown-include", MarkdownInclude)
    app.add_directive("optional-figure", OptionalFigure)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
