"""The run report: sections of text, tables and figures, written as markdown and as an
HTML page that opens in any browser. Figures are copied beside the pages so the report
folder can be moved or archived whole.

The report only lays out what it is given; every number in it comes from the run's own
artifacts (workflows/report.py reads them).

The page is at most ``PAGE_CONTENT_PX`` wide; a figure wider than that is shown shrunk, its
text with it, so the figures are drawn to fit (alignray.core.metrics) and a wider one is logged.
"""
from __future__ import annotations

import html
import logging
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
# The body's max-width (1100px in _STYLE) less its 1em padding on each side.
PAGE_CONTENT_PX = 1068


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: list[list] = field(default_factory=list)  # first row is the header
    figures: list[Path] = field(default_factory=list)
    # More tables after the first, each under its caption (caption -> rows, header first).
    named_tables: dict[str, list[list]] = field(default_factory=dict)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _markdown_table(rows: list[list]) -> str:
    header, *body = [[_cell(v).replace("|", "\\|").replace("\n", " ") for v in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _html_table(rows: list[list]) -> str:
    header, *body = rows
    head = "".join(f"<th>{html.escape(_cell(v))}</th>" for v in header)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top;font-size:14px}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em}h3{font-size:15px;margin:1em 0 0}"""


# Marks the page once loaded with the number of figures that failed to render and of those
# shown narrower than drawn (their text shrunk), so a headless browser (and a person's
# devtools) can see a broken or unreadable report at a glance.
_IMAGE_CHECK = """<script>window.addEventListener('load',()=>{const images=[...document.images];
document.body.dataset.brokenImages=images.filter(i=>!i.complete||i.naturalWidth===0).length;
document.body.dataset.shrunkImages=images.filter(i=>i.naturalWidth>0&&i.width<i.naturalWidth).length;
document.body.dataset.images=images.length;});</script>"""


def png_size(path: str | Path) -> tuple[int, int]:
    """Width and height in pixels, from the PNG header."""
    with Path(path).open("rb") as f:
        header = f.read(24)
    if header[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    return struct.unpack(">II", header[16:24])


def write_report(out_dir: str | Path, title: str, sections: list[Section]) -> dict[str, Path]:
    """Write `report.md` and `report.html` (figures copied into `figures/`)."""
    out = Path(out_dir)
    shutil.rmtree(out / "figures", ignore_errors=True)  # a rewrite must not keep stale figures
    (out / "figures").mkdir(parents=True)
    md, body = [f"# {title}"], [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        md.append(f"\n## {section.title}\n")
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        for text in section.paragraphs:
            md.append(text + "\n")
            body.append(f"<p>{html.escape(text)}</p>")
        if section.table:
            md.append(_markdown_table(section.table) + "\n")
            body.append(_html_table(section.table))
        for caption, rows in section.named_tables.items():
            md.append(f"**{caption}**\n\n" + _markdown_table(rows) + "\n")
            body.append(f"<h3>{html.escape(caption)}</h3>" + _html_table(rows))
        for figure in section.figures:
            figure = Path(figure)
            if not figure.exists():
                raise FileNotFoundError(f"report section {section.title!r}: figure {figure} is missing")
            target = out / "figures" / f"{len(list((out / 'figures').iterdir())):02d}-{figure.name}"
            shutil.copyfile(figure, target)
            if figure.suffix == ".png" and png_size(figure)[0] > PAGE_CONTENT_PX:
                log.warning("figure %s is %d px wide: the report page (%d px) shows it shrunk, its text too",
                            figure, png_size(figure)[0], PAGE_CONTENT_PX)
            rel = target.relative_to(out).as_posix()
            md.append(f"![{figure.stem}]({rel})\n")
            body.append(f'<img src="{html.escape(rel)}" alt="{html.escape(figure.stem)}">')
    (out / "report.md").write_text("\n".join(md))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}{_IMAGE_CHECK}</body></html>")
    (out / "report.html").write_text(page)
    return {"markdown": out / "report.md", "html": out / "report.html"}
