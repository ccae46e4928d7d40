"""Render leaderboard tables as terminal text, Markdown, CSV or a standalone HTML page.

Best cells are bold in Markdown/HTML and end with ``*`` in text.  CSV carries the numeric
frames (not the strings), one block per table, each preceded by ``# table: <title>``; the
metadata goes first as ``# key: value`` lines.  ``read_csv_tables`` parses it back.

Labels, grid names and tag values come from whoever wrote the runs, so every string is
rendered inertly: on one line in all formats (newlines and other control characters
folded), ``|``, ``<``, ``>`` and ``&`` escaped in Markdown, everything escaped in HTML, and
CSV cells that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@`` first)
prefixed with ``'`` (OWASP's advice for CSV injection).

The HTML page is one self-contained file: every figure passed in ``plots`` is embedded as
a base64 PNG, every label and value is escaped, and a Content-Security-Policy allows no
script and no request at all (images only as ``data:``), so it reads the same offline, as
an MLflow artifact or as an e-mail attachment.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from harness.errors import KDBenchError
from leaderboards.tables import Table

FORMATS = ("text", "md", "csv", "html")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _inline(value: object) -> str:
    """``value`` as one line: whitespace runs folded, control characters (ANSI too) dropped."""
    return _CONTROL.sub("", " ".join(str(value).split()))


def _md_inline(value: object) -> str:
    """One line that neither ends a Markdown table cell nor opens an HTML tag."""
    return html.escape(_inline(value), quote=False).replace("|", "\\|")


def _csv_cell(value: object) -> object:
    if not isinstance(value, str):
        return value
    text = _inline(value)
    return f"'{text}" if text[:1] in ("=", "+", "-", "@") else text


def _inert(frame: pd.DataFrame, clean) -> pd.DataFrame:
    """``frame`` with ``clean`` applied to its string cells, index and column labels."""
    out = frame.map(lambda v: clean(v) if isinstance(v, str) else v)
    out.index = out.index.map(lambda v: clean(v) if isinstance(v, str) else v)
    out.index.names = [clean(n) if isinstance(n, str) else n for n in frame.index.names]
    out.columns = [clean(c) if isinstance(c, str) else c for c in frame.columns]
    return out


def _marked(table: Table, mark) -> pd.DataFrame:
    shown = table.display.copy().astype(object)
    for row, col in table.best:
        if row in shown.index and col in shown.columns:
            shown.loc[row, col] = mark(str(shown.loc[row, col]))
    return shown.fillna("")


def _grid(shown: pd.DataFrame, fmt: str) -> str:
    index_name = shown.index.name or ""
    align = ("left",) + ("right",) * len(shown.columns)
    return tabulate(
        shown,
        headers=[index_name, *map(str, shown.columns)],
        tablefmt=fmt,
        colalign=align,
        disable_numparse=True,
        showindex=True,
    )


def _text(tables: list[Table], metadata: dict) -> str:
    width = max((len(k) for k in metadata), default=0)
    out = [f"{k.rjust(width)}: {_inline(v)}" for k, v in metadata.items()]
    for table in tables:
        title = _inline(table.title)
        out += ["", title, "=" * len(title)]
        if table.display.empty:
            out.append("(no runs)")
        else:
            out.append(_grid(_inert(_marked(table, lambda s: f"{s}*"), _inline), "simple"))
        out += [f"  {_inline(note)}" for note in table.notes]
    return "\n".join(out) + "\n"


def _md(tables: list[Table], metadata: dict) -> str:
    out = ["# kdbench leaderboard", ""]
    out += [f"- **{_md_inline(k)}**: {_md_inline(v)}" for k, v in metadata.items()]
    for table in tables:
        out += ["", f"## {_md_inline(table.title)}", ""]
        if table.display.empty:
            out.append("_no runs_")
        else:
            shown = _inert(table.display.astype(object).fillna(""), _md_inline)
            for row, col in table.best:
                r, c = _md_inline(row), _md_inline(col)
                if r in shown.index and c in shown.columns and shown.loc[r, c]:
                    shown.loc[r, c] = f"**{shown.loc[r, c]}**"
            out.append(_grid(shown, "pipe"))
        if table.notes:
            out += [""] + [f"> {_md_inline(note)}  " for note in table.notes]
    return "\n".join(out) + "\n"


def _csv(tables: list[Table], metadata: dict) -> str:
    out = [f"# {_inline(k)}: {_inline(v)}" for k, v in metadata.items()]
    for table in tables:
        out += ["", f"# table: {_inline(table.title)}"]
        data = table.data.reset_index() if _named_index(table.data) else table.data
        out.append(_inert(data, _csv_cell).to_csv(index=False).rstrip("\n"))
    return "\n".join(out) + "\n"


def _named_index(df: pd.DataFrame) -> bool:
    return any(name is not None for name in df.index.names)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}
th,td{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}
table.meta td,table.meta th{text-align:left;border:none;padding:.1em .7em}
p.note{color:#555;font-size:.9em;margin:.2em 0}
figure{margin:1em 0 2em}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _figure(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    name = html.escape(Path(path).name)
    return (
        f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
        f"<figcaption>{name}</figcaption></figure>"
    )


def _html(tables: list[Table], metadata: dict, plots: list[Path] = ()) -> str:
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>kdbench leaderboard</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>kdbench leaderboard</h1>",
        '<table class="meta">',
    ]
    out += [f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in metadata.items()]
    out.append("</table>")
    for table in tables:
        out.append(f"<h2>{esc(table.title)}</h2>")
        if table.display.empty:
            out.append("<p>No runs.</p>")
        else:
            shown = table.display.astype(object).fillna("").map(lambda v: esc(str(v)))
            shown.index = [esc(str(i)) for i in shown.index]
            shown.columns = [esc(str(c)) for c in shown.columns]
            for row, col in table.best:
                r, c = esc(str(row)), esc(str(col))
                if r in shown.index and c in shown.columns:
                    shown.loc[r, c] = f"<b>{shown.loc[r, c]}</b>"
            shown.index.name = esc(str(table.display.index.name or ""))
            out.append(shown.to_html(escape=False, border=0, classes="board"))
        out += [f'<p class="note">{esc(note)}</p>' for note in table.notes]
    if plots:
        out.append("<h2>Figures</h2>")
        out += [_figure(path) for path in plots]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render(tables: list[Table], fmt: str = "text", metadata: dict | None = None, plots=()) -> str:
    """All ``tables`` in one document of format text|md|csv|html, metadata block first.

    ``plots``: PNG files that the HTML page embeds (the other formats list them in the
    metadata only).
    """
    writers = {"text": _text, "md": _md, "csv": _csv}
    if fmt == "html":
        return _html(list(tables), dict(metadata or {}), [Path(p) for p in plots])
    if fmt not in writers:
        raise KDBenchError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    return writers[fmt](list(tables), dict(metadata or {}))


def read_csv_tables(text: str) -> dict[str, pd.DataFrame]:
    """Parse ``render(..., "csv")`` back into ``{title: DataFrame}``."""
    tables: dict[str, pd.DataFrame] = {}
    blocks = text.split("\n# table: ")[1:]
    for block in blocks:
        title, _, body = block.partition("\n")
        tables[title] = pd.read_csv(io.StringIO(body)) if body.strip() else pd.DataFrame()
    return tables
