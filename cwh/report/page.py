"""The report as one HTML page: its style and its small script inline, charts as inline SVG,
nothing fetched when it is read (no server, no network)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape

from cwh.report import svg
from cwh.report.model import FAIL, INFO, OK, Chart, Report, Row

STYLE = """
body{font:14px/1.45 "DejaVu Sans",system-ui,sans-serif;margin:0 auto;max-width:1000px;
 padding:0 16px 48px;color:#212121}
h1{font-size:22px;margin:18px 0 6px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid
 #e0e0e0} h3{font-size:14px;margin:14px 0 2px}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:bold;
 text-transform:uppercase;letter-spacing:.05em}
.verdict.pass{background:#2e7d32}.verdict.fail{background:#c62828}
.verdict.inconclusive{background:#6a1b9a}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #e0e0e0;padding:2px 6px;
 text-align:left;vertical-align:top}th{background:#fafafa}
tr.fail td{background:#ffebee}tr.pass td:nth-child(2){color:#2e7d32}
tr.no_data td:nth-child(2),tr.warn td:nth-child(2){color:#6a1b9a}
.facts{display:flex;gap:24px;flex-wrap:wrap}.facts table{font-size:13px}
svg{max-width:100%;height:auto;font-size:10px;font-family:"DejaVu Sans",sans-serif}
svg text{fill:#424242}.plot-area{fill:#fff;stroke:#bdbdbd}.grid{stroke:#eeeeee}
.fault-label{font-size:9px;fill:#424242}.unit{fill:#757575}
.span{fill:none;stroke:#c62828;stroke-width:1.5;stroke-dasharray:4 2}
.span.target{stroke-width:3}.mark{stroke:#2e7d32;stroke-dasharray:2 2}
.trial{fill:#1565c0;fill-opacity:.7}.median{stroke:#212121;stroke-width:2}
.bound{stroke:#c62828;stroke-width:2;stroke-dasharray:6 3}
figure{margin:4px 0 10px}figcaption{font-weight:bold;font-size:13px}
.legend{font-size:12px;color:#424242}.legend span{margin-right:12px;white-space:nowrap}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px}
.missing{background:#fff8e1;border:1px dashed #f9a825;padding:6px 8px;margin:4px 0}
.note{color:#616161;font-size:12px}pre{white-space:pre-wrap;word-break:break-all;font-size:11px;
 background:#fafafa;border:1px solid #eeeeee;padding:4px;margin:2px 0}
#zoom{font-size:12px;color:#616161}.timeline{cursor:crosshair}
"""

#: Zoom: drag across any timeline to show that window on all of them, double-click (or the
#: reset link) to see the whole run; a failed SLO's link zooms to its window.
SCRIPT = """
(function(){
 var charts=[].slice.call(document.querySelectorAll('svg.timeline'));
 if(!charts.length)return;
 var c0=charts[0],T0=+c0.dataset.t0,T1=+c0.dataset.t1,view=[T0,T1];
 function pad(n){return (n<10?'0':'')+n}
 function hms(t){var d=new Date(t*1000);return pad(d.getUTCHours())+':'+pad(d.getUTCMinutes())
  +':'+pad(d.getUTCSeconds())}
 var steps=[1,2,5,10,15,30,60,120,300,600,900,1800,3600,7200,21600,86400];
 function apply(a,b){
  view=[a,b];
  charts.forEach(function(c){
   var L=+c.dataset.left,W=+c.dataset.inner,plot=c.querySelector('svg.plot');
   var H=plot.getAttribute('height'),s=W/(T1-T0);
   plot.setAttribute('viewBox',((a-T0)*s)+' 0 '+((b-a)*s)+' '+H);
   var g=c.querySelector('g.ticks'),y=+g.dataset.y,st=steps.filter(function(x){
    return (b-a)/x<=10})[0]||86400,html='';
   for(var t=Math.ceil(a/st)*st;t<=b;t+=st){var x=L+(t-a)/(b-a)*W;
    html+='<line class="grid" x1="'+x+'" x2="'+x+'" y1="10" y2="'+(y+3)+'"></line>'+
     '<text x="'+x+'" y="'+(y+15)+'" text-anchor="middle">'+hms(t)+'</text>'}
   g.innerHTML=html;
   [].forEach.call(c.querySelectorAll('.fault-label'),function(l){
    var t=+l.dataset.start;l.setAttribute('x',L+(t-a)/(b-a)*W+2);
    l.style.display=(t>=a&&t<=b)?'':'none'});
  });
  var z=document.getElementById('zoom');
  if(z)z.textContent=(a===T0&&b===T1)?'whole run':('zoomed: '+hms(a)+' to '+hms(b)+' UTC');
 }
 function timeAt(c,ev){var r=c.querySelector('rect.plot-area').getBoundingClientRect();
  var f=Math.min(1,Math.max(0,(ev.clientX-r.left)/r.width));return view[0]+f*(view[1]-view[0])}
 var drag=null;
 charts.forEach(function(c){
  c.addEventListener('mousedown',function(ev){drag={c:c,t:timeAt(c,ev)};ev.preventDefault()});
  c.addEventListener('dblclick',function(){apply(T0,T1)});
 });
 document.addEventListener('mouseup',function(ev){if(!drag)return;
  var t=timeAt(drag.c,ev),a=Math.min(t,drag.t),b=Math.max(t,drag.t);drag=null;
  if(b-a>=1)apply(a,b)});
 [].forEach.call(document.querySelectorAll('a[data-start]'),function(link){
  link.addEventListener('click',function(){var a=+link.dataset.start,b=+link.dataset.end,
   m=Math.max(5,(b-a)*0.15);apply(Math.max(T0,a-m),Math.min(T1,b+m))})});
 var reset=document.getElementById('zoom-reset');
 if(reset)reset.addEventListener('click',function(ev){ev.preventDefault();apply(T0,T1)});
})();
"""


def e(value: object) -> str:
    return escape(str(value), quote=True)


def table(head: Sequence[str], rows: Sequence[Row], first_id: str = "") -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = [f"<td>{e(c)}</td>" for c in row.cells]
        if row.link is not None:
            s = row.link
            cells.append(
                f'<td><a href="#{e(s.anchor)}" data-start="{s.start}" data-end="{s.end}">'
                f"{svg.utc(s.start)} to {svg.utc(s.end)}</a> ({e(s.why)})</td>"
            )
        elif len(head) > len(row.cells):
            cells.append("<td></td>")
        out.append(f'<tr class="{e(row.status)}">' + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def pairs(rows: Sequence[tuple[str, str]], title: str = "") -> str:
    if not rows:
        return ""
    head = f"<tr><th colspan=2>{e(title)}</th></tr>" if title else ""
    body = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in rows)
    return f"<table>{head}{body}</table>"


def legend(chart: Chart) -> str:
    items: list[tuple[str, str, bool]] = []
    if chart.bars is not None:
        items = [(s.label, s.color, False) for s in chart.bars.stacks]
    elif chart.lines:
        items = [(ln.label, ln.color, ln.dashed) for ln in chart.lines]
    elif chart.lanes:
        seen = {r for lane in chart.lanes for _, _, r in lane.segments}
        items = [(role, color, False) for role, color in chart.role_colors if role in seen]
    spans = "".join(
        f'<span><i style="background:{color}{";opacity:.6" if dashed else ""}"></i>'
        f"{e(label)}{' (dashed)' if dashed else ''}</span>"
        for label, color, dashed in items
    )
    note = f' <span class="note">{e(chart.note)}</span>' if chart.note else ""
    return f'<div class="legend">{spans}{note}</div>'


def header(r: Report) -> str:
    out = [
        f"<h1>{e(r.title)}</h1>",
        f'<p><span class="verdict {e(r.verdict)}" id="verdict">{e(r.verdict)}</span></p>',
    ]
    if r.reasons:
        out.append("<ul id=reasons>" + "".join(f"<li>{e(x)}</li>" for x in r.reasons) + "</ul>")
    if r.next_steps:
        out.append(
            "<h3>What to do next</h3><ol id=next-steps>"
            + "".join(f"<li>{e(x)}</li>" for x in r.next_steps)
            + "</ol>"
        )
    out.append(
        '<div class="facts">'
        + pairs(r.facts, "run")
        + pairs(r.settings, "settings that matter")
        + "</div>"
    )
    if r.versions:
        listed = " · ".join(f"{k} {v}" for k, v in r.versions)
        out.append(f'<p class="note" id="versions">Versions: {e(listed)}</p>')
    return "".join(out)


def timelines(r: Report) -> str:
    if r.axis is None or not r.charts:
        return ""
    out = [
        '<h2 id="timeline">Timeline</h2>',
        '<p class="note">One time axis (UTC) for every chart; the shaded windows are the faults '
        "from faults.jsonl, numbered as below; dashed red outlines are the windows of failed "
        'SLOs. Drag across a chart to zoom all of them, double-click to reset. <span id="zoom">'
        'whole run</span> <a href="#timeline" id="zoom-reset">reset</a></p>',
    ]
    if r.faults:
        out.append("<ol id=faults>")
        for w in r.faults:
            end = "not restored" if w.end is None else f"{svg.utc(w.end)} ({w.end - w.start:.1f} s)"
            detail = f", {w.detail}" if w.detail else ""
            out.append(f"<li>{e(w.fault)}: {svg.utc(w.start)} to {e(end)}{e(detail)}</li>")
        out.append("</ol>")
    else:
        out.append('<p class="note">No fault was injected in this run.</p>')
    first = True
    for chart in r.charts:
        body = ""
        if chart.missing:
            body = f'<p class="missing">{e(chart.missing)}</p>'
        else:
            marks = r.marks.get(chart.chart_id, [])
            body = svg.timeline(chart, r.axis, r.faults, r.spans, marks, span_ids=first)
            body += legend(chart)
            first = False
        out.append(
            f'<figure class="chart" id="chart-{e(chart.chart_id)}" data-chart="{e(chart.chart_id)}"'
            f' data-points="{chart.points}" data-missing="{e(chart.missing)}">'
            f"<figcaption>{e(chart.title)}</figcaption>{body}</figure>"
        )
    return "".join(out)


def sections(r: Report) -> str:
    out = []
    if r.recovery or r.distributions:
        out.append('<h2 id="recovery">Recovery: RTO per path and RPO</h2>')
        if r.recovery:
            out.append(table(r.recovery_head, r.recovery))
        if r.recovery_note:
            out.append(f'<p class="note">{e(r.recovery_note)}</p>')
        if r.distributions:
            out.append(svg.distributions(r.distributions))
            out.append(
                '<p class="note">Each dot is one trial; the black bar the median; the dashed '
                "red line the bound the configuration promises (where one applies).</p>"
            )
    if r.slo or r.slo_note:
        out.append('<h2 id="slo">SLOs</h2>')
        if r.slo_note:
            out.append(f'<p class="note">{e(r.slo_note)}</p>')
        if r.slo:
            head = ("SLO", "status", "measured", "objective", "margin", "budget used", "key")
            out.append(table((*head, "reason", "window that broke it"), r.slo))
    if r.reconciliation or r.listed:
        out.append('<h2 id="reconciliation">Reconciliation</h2>')
        out.append(pairs(r.reconciliation))
        out.append(listed(r))
    for title, html in r.sections:
        out.append(f"<h2>{e(title)}</h2>{html}")
    for caption, uri in r.images:
        out.append(f'<figure><img src="{e(uri)}" alt="{e(caption)}" style="max-width:100%">'
                   f"<figcaption>{e(caption)}</figcaption></figure>")  # fmt: skip
    return "".join(out)


def listed(r: Report) -> str:
    if not r.listed:
        return '<p class="note">No request lost, duplicated or left un-notified.</p>'
    out = ["<ul id=listed>"]
    for item in r.listed:
        link = f'<a href="{e(item.ledger)}">{e(item.ledger)}</a>'
        quoted = [
            f'<pre id="{e(anchor(item.ledger, entry.line))}">{link} line {entry.line}: '
            f"{e(entry.text)}</pre>"
            for entry in item.entries
        ]
        lines = "".join(quoted) or '<p class="note">not in this ledger</p>'
        out.append(f'<li class="{e(item.what)}"><b>{e(item.what)}</b> {e(item.ident)}{lines}</li>')
    out.append("</ul>")
    return "".join(out)


def anchor(ledger: str, line: int) -> str:
    """The id of a quoted ledger line: `ledger-L12`, or `<folder>-ledger-L12` in a game day."""
    prefix = ledger.removesuffix("ledger.jsonl").strip("/").replace("/", "-")
    return f"{prefix + '-' if prefix else ''}ledger-L{line}"


def render(r: Report) -> str:
    """The whole page."""
    made = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>{e(r.title)}: {e(r.verdict)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{STYLE}</style></head><body>"
        f"{header(r)}{''.join(f'<h2>{e(t)}</h2>{html}' for t, html in r.lead)}"
        f"{timelines(r)}{sections(r)}"
        f'<p class="note">Made {made} by <code>cwh report html</code> from the files of this '
        "folder; it needs no server and no network.</p>"
        f"<script>{SCRIPT}</script></body></html>"
    )


__all__ = ["FAIL", "INFO", "OK", "render"]
