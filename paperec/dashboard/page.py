"""The dashboard's one HTML page: panels of server-rendered SVG charts (and HTML tables), inline
CSS, no scripts.

Everything is inline (no fonts, styles or scripts from a CDN): the page must render offline and
in a sandboxed headless browser. A meta refresh reloads it; the server re-queries each time.
"""

from __future__ import annotations

import time
from html import escape

from paperec.dashboard.model import Dashboard, Panel, Table
from paperec.dashboard.svg import NO_DATA, chart_svg

CSS = """
body { font: 14px/1.4 "DejaVu Sans", "Liberation Sans", Arial, sans-serif; margin: 16px 20px;
       color: #222; background: #f4f5f7; }
header h1 { font-size: 22px; margin: 0 0 4px; }
header p { margin: 0 0 12px; color: #555; }
.error { background: #fde2e1; border: 1px solid #e15759; padding: 8px 12px; margin: 8px 0; }
section.panel { background: #fff; border: 1px solid #d8dbe0; border-radius: 6px;
                margin: 0 0 14px; padding: 8px 12px 4px; }
section.panel h2 { font-size: 17px; margin: 2px 0 0; }
section.panel p.note { margin: 0 0 6px; color: #666; font-size: 12px; }
.charts { display: flex; flex-wrap: wrap; gap: 8px 18px; }
figure.chart { margin: 0; }
figure.chart figcaption { font-weight: bold; font-size: 13px; margin: 2px 0; }
svg text { font-family: "DejaVu Sans", Arial, sans-serif; fill: #333; }
svg .tick { font-size: 11px; }
svg .axis-title { font-size: 12px; fill: #555; }
svg .legend-label { font-size: 12px; }
svg .grid { stroke: #e3e5e8; stroke-width: 1; }
svg .axis { stroke: #888; stroke-width: 1; }
svg .empty-box { fill: #fafafa; stroke: #ddd; stroke-dasharray: 4 3; }
svg .no-data { font-size: 15px; fill: #999; }
figure.table { flex-basis: 100%; }
table.data { border-collapse: collapse; font-size: 12px; }
table.data th, table.data td { border-bottom: 1px solid #e3e5e8; padding: 3px 8px; text-align: left;
                               vertical-align: top; }
table.data th { background: #f4f5f7; }
table.data td.evidence { font-family: "DejaVu Sans Mono", monospace; font-size: 11px; max-width: 520px; }
p.no-data { color: #999; margin: 4px 0 10px; }
"""


EVIDENCE_CELL = '<td class="evidence">'


def render_table(table: Table) -> str:
    """An HTML table; every cell is escaped (reasons and evidence come from the data)."""
    if table.is_empty():
        return f'<p class="no-data">{NO_DATA}</p>'
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = "".join(
            (EVIDENCE_CELL if c == "evidence" else "<td>") + escape(v) + "</td>"
            for c, v in zip(table.columns, row, strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def render_panel(panel: Panel) -> str:
    parts = [
        f'<section class="panel" id="panel-{escape(panel.key)}">',
        f"<h2>({escape(panel.key)}) {escape(panel.title)}</h2>",
    ]
    if panel.note:
        parts.append(f'<p class="note">{escape(panel.note)}</p>')
    parts += [f'<div class="error">query failed: {escape(e)}</div>' for e in panel.errors]
    parts.append('<div class="charts">')
    for chart in panel.charts:
        if isinstance(chart, Table):
            parts.append(
                f'<figure class="chart table"><figcaption>{escape(chart.title)}</figcaption>'
                f"{render_table(chart)}</figure>"
            )
            continue
        parts.append(
            f'<figure class="chart"><figcaption>{escape(chart.title)}</figcaption>{chart_svg(chart)}</figure>'
        )
    parts.append("</div></section>")
    return "\n".join(parts)


def render_page(dashboard: Dashboard, refresh_s: int = 10) -> str:
    generated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dashboard.generated_at))
    header = (
        f"<header><h1>paperec dashboard</h1><p>ClickHouse database <b>{escape(dashboard.database)}</b>"
        f" · last {dashboard.window_minutes} min in {dashboard.step_s} s buckets · generated {generated}"
        f' · refreshes every {refresh_s} s · data as JSON: <a href="api/panels.json">api/panels.json</a>'
        "</p></header>"
    )
    error = f'<div class="error">{escape(dashboard.error)}</div>' if dashboard.error else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{int(refresh_s)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>paperec dashboard</title><style>{CSS}</style></head>\n<body>\n"
        + header
        + error
        + "\n".join(render_panel(p) for p in dashboard.panels)
        + "\n</body></html>\n"
    )
