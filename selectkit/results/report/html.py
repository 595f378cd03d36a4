"""HTML building blocks of report.html: escaping, number formats, tables, sections, the page shell.
Everything is escaped here, so no text from a pool or a manifest reaches the page unescaped."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

# The browser itself refuses any request the page might make: no scripts, fonts, frames or fetches.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#f6f8fa;--accent:#1f6feb;--warn:#9a6700;--warnbg:#fff8c5}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);margin:0;padding:0 24px 48px;
max-width:1240px;margin-inline:auto}
header.top{padding:18px 0 6px}\n.grid>div{min-width:0}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;padding-top:8px;border-top:1px solid var(--line)}
h3{font-size:15px;margin:16px 0 6px}\np.lead{font-size:15px;margin:4px 0 10px}
nav{font-size:13px;margin:8px 0}nav a{color:var(--accent);margin-right:12px;text-decoration:none}
.muted{color:var(--muted)}code,.mono{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
th{background:var(--bg);font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto;max-width:100%}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{display:inline-block;vertical-align:top;margin:6px 0;border:1px solid var(--line);border-radius:6px;
padding:6px;background:#fff}
figure svg{display:block;max-width:100%;height:auto}figcaption{font-size:12px;color:var(--muted)}
ul.warnings{list-style:none;padding:0}ul.warnings li{background:var(--warnbg);color:var(--warn);
border:1px solid #d4a72c66;border-radius:6px;padding:6px 10px;margin:4px 0}
.ok{color:#1a7f37}.text{white-space:pre-wrap;word-break:break-word;max-width:640px}
.yes{color:#1a7f37;font-weight:600}.no{color:var(--muted)}
details>summary{cursor:pointer;color:var(--accent)}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def num(value, digits: int = 4) -> str:
    """A deterministic, readable number: ints with separators, floats to `digits` significant digits."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if value == int(value) and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:.{digits}g}"
    return str(value)


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def table(headers: Sequence[str], rows: Iterable[Sequence], numeric: Iterable[int] = (), raw: Iterable[int] = (),
          cls: str = "") -> str:
    """A table; cells are escaped unless their column is in `raw` (already HTML), right-aligned when `numeric`."""
    numeric, raw = set(numeric), set(raw)
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{esc(h)}</th>' for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            content = cell if i in raw else esc(num(cell) if i in numeric else ("–" if cell is None else cell))
            cells.append(f'<td{" class=num" if i in numeric else ""}>{content}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    klass = f' class="{cls}"' if cls else ""
    return (f'<div class="scroll"><table{klass}><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def pairs(rows: Iterable[tuple[str, object]]) -> str:
    """A two-column key/value table without a header row; None values are left out."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(num(v))}</td></tr>" for k, v in rows if v is not None)
    return f'<div class="scroll"><table class="pairs"><tbody>{body}</tbody></table></div>'


def section(ident: str, title: str, body: str, intro: str = "") -> str:
    lead = f'<p class="muted">{esc(intro)}</p>' if intro else ""
    return f'<section id="{esc(ident)}"><h2>{esc(title)}</h2>{lead}{body}</section>\n'


def figure(svg: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure>{svg}{cap}</figure>"


def page(title: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document: CSP, inline CSS, a nav over (id, title, html) sections. No script, no external link."""
    nav = "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t, _ in sections if i != "header")
    body = "".join(h for _, _, h in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<meta name="referrer" content="no-referrer">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"{_with_nav(body, nav)}</body>\n</html>\n")


def _with_nav(body: str, nav: str) -> str:
    """Put the navigation right after the header section."""
    marker = "</header>"
    if marker in body:
        head, rest = body.split(marker, 1)
        return f"{head}<nav>{nav}</nav>{marker}{rest}"
    return f"<nav>{nav}</nav>{body}"
