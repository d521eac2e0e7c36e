"""Static HTML reports rendered from `results.json`: one page per run, or one page for many runs.

A page holds the findings, the figures (PNG files linked by relative path, so the page makes no
network request and opens from disk), the tables, the exact command that reproduces the run,
the resnetlab version and commit, and the full config. `format_table` renders the same tables
for the terminal.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from resnetlab import __version__
from resnetlab.atomic import write_atomic
from resnetlab.errors import Error
from resnetlab.experiments.record import REPORT_FILE, RESULTS_FILE, RunRecord, Table

_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; color: #1d1d1f; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin-top: 0; }
.findings { background: #f4f8ff; border-left: 4px solid #3a6fd8; padding: .6em 1.2em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: .92em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: .25em .7em; text-align: left; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; } th { background: #f3f3f3; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3em; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .88em; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1.2em; }
dt { font-weight: 600; } dd { margin: 0; font-family: ui-monospace, monospace; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


_NUMBER = re.compile(r"[-+]?[\d.]+(e[-+]?\d+)?( ± [\d.]+)?%?")


def _cell(text: object) -> str:
    """A table cell; numbers (also "mean ± std") are right-aligned."""
    numeric = _NUMBER.fullmatch(str(text)) is not None
    return f'<td class="num">{_e(text)}</td>' if numeric else f"<td>{_e(text)}</td>"


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in table.rows)
    caption = f"<caption>{_e(table.title)}</caption>"
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure_src(run_dir: Path, file: str, page_dir: Path) -> str:
    path = run_dir / file
    if not path.is_file():
        raise Error(f"figure {path} listed in {run_dir / RESULTS_FILE} is missing; rerun the experiment")
    return quote(Path(os.path.relpath(path.resolve(), page_dir.resolve())).as_posix())


def _run_section(record: RunRecord, run_dir: Path, page_dir: Path, anchor: str, level: int) -> str:
    h, hs = f"h{level}", f"h{level + 1}"
    prov = record.provenance
    parts = [
        f'<section id="{_e(anchor)}">',
        f"<{h}>{_e(record.title)}</{h}>",
        f'<p class="sub">Reproduces {_e(record.reproduces)} &middot; preset <b>{_e(record.preset)}</b>'
        f" &middot; run directory <code>{_e(run_dir)}</code></p>",
        f"<{hs}>Findings</{hs}>",
        '<div class="findings"><ul>'
        + "".join(f"<li>{_e(f)}</li>" for f in record.outcome.findings)
        + "</ul></div>",
    ]
    if record.outcome.figures:
        parts.append(f"<{hs}>Figures</{hs}>")
    for fig in record.outcome.figures:
        src = _figure_src(run_dir, fig.file, page_dir)
        parts.append(
            f'<figure><img src="{_e(src)}" alt="{_e(fig.caption)}">'
            f"<figcaption>{_e(fig.caption)}</figcaption></figure>"
        )
    if record.outcome.tables:
        parts.append(f"<{hs}>Tables</{hs}>")
        parts += [_table_html(t) for t in record.outcome.tables]
    parts += [
        f"<{hs}>Reproduce</{hs}>",
        f"<pre><code>{_e(record.command)}</code></pre>",
        f"<{hs}>Provenance</{hs}>",
        "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in prov.items()) + "</dl>",
        f"<{hs}>Config</{hs}>",
        _table_html(
            Table(
                "Every field of the run's config",
                ["field", "value"],
                [[k, json.dumps(v)] for k, v in record.config.items()],
            )
        ),
        "</section>",
    ]
    return "\n".join(parts)


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
        f'<footer><p class="sub">Written by resnetlab {_e(__version__)}.</p></footer>\n</body></html>\n'
    )


def write_run_report(run_dir: Path) -> Path:
    """Render `run_dir/report.html` from `run_dir/results.json`."""
    run_dir = Path(run_dir)
    record = RunRecord.load(run_dir)
    out = run_dir / REPORT_FILE
    write_atomic(out, _page(record.title, _run_section(record, run_dir, run_dir, record.experiment, 1)))
    return out


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Run directories among `paths`: each path is a run, or a folder whose subfolders hold runs."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if (path / RESULTS_FILE).is_file():
            runs.append(path)
            continue
        if not path.is_dir():
            raise Error(f"{path} is not a directory; pass run directories written by `resnetlab experiment`")
        found = sorted(p.parent for p in path.glob(f"*/{RESULTS_FILE}"))
        if not found:
            raise Error(f"{path} holds no {RESULTS_FILE} (nor do its subfolders); pass a run directory")
        runs += found
    return runs


def write_combined_report(run_dirs: Sequence[Path], out: Path) -> Path:
    """One page for several runs: an index table, then each run's section."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = [(Path(d), RunRecord.load(Path(d))) for d in run_dirs]
    anchors = [f"run{i}-{r.experiment}" for i, (_, r) in enumerate(records)]
    index_rows = "".join(
        f'<tr><td><a href="#{_e(a)}">{_e(r.title)}</a></td><td>{_e(r.preset)}</td>'
        f"<td>{_e(r.provenance.get('started', ''))}</td>"
        f"<td>{_e(r.outcome.findings[0] if r.outcome.findings else '')}</td></tr>"
        for a, (_, r) in zip(anchors, records, strict=True)
    )
    head = "".join(f"<th>{c}</th>" for c in ("experiment", "preset", "started", "first finding"))
    body = [
        "<h1>resnetlab experiments</h1>",
        f'<p class="sub">{len(records)} run(s); each section below is also in its own run directory.</p>',
        f"<nav><table><caption>Index</caption><thead><tr>{head}</tr></thead><tbody>{index_rows}</tbody></table></nav>",
    ]
    body += [_run_section(r, d, out.parent, a, 2) for a, (d, r) in zip(anchors, records, strict=True)]
    write_atomic(out, _page("resnetlab experiments", "\n".join(body)))
    return out


def format_table(table: Table) -> str:
    """The table as aligned plain text for the terminal."""
    rows = [table.columns, *table.rows]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(table.columns))]

    def line(row: list[str]) -> str:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells)

    rule = "-" * len(line(table.columns))
    return "\n".join([table.title, rule, line(table.columns), rule, *map(line, table.rows), rule])
