"""Per-client verdicts of a compatibility report, as text (the CLI) and HTML (the studio's Export tab).

Plain Python on the report's dict (`Report.to_dict()`, the JSON of `python -m trainer check --json`), no
torch: the studio renders exactly what the CLI computed, so the two cannot disagree
(docs/adapter-format.md, "Per-client verdicts").
"""
from __future__ import annotations

import html

CLIENTS = ("ComfyUI", "A1111/Forge", "sd-scripts", "diffusers")
MARK = {True: "✓", False: "✗"}


def verdict_rows(report: dict) -> list[tuple[str, bool, str]]:
    """(client, applies it as trained?, reason) for each client, in CLIENTS order."""
    by_name = {c["client"]: c for c in report.get("clients") or []}
    rows = []
    for client in CLIENTS:
        c = by_name.get(client)
        if c is None:  # a report without verdicts (unreadable file): nothing can be said to work
            rows.append((client, False, "not checked"))
        else:
            rows.append((client, bool(c["ok"]), str(c["reason"])))
    return rows


def verdict_summary(report: dict) -> str:
    """'ComfyUI ✓, A1111/Forge ✓, sd-scripts ✗, diffusers ✗'."""
    return ", ".join(f"{client} {MARK[ok]}" for client, ok, _ in verdict_rows(report))


def verdict_text(report: dict) -> list[str]:
    """The CLI's lines: one per client, the reason after a ✗ (and after a ✓ when it qualifies it)."""
    return [f"  {MARK[ok]} {client}: {reason}" for client, ok, reason in verdict_rows(report)]


def verdict_html(report: dict) -> str:
    """The Export tab's view: overall verdict, a table of clients, the findings folded below."""
    verdict = str(report.get("verdict", "fail")).upper()
    e = html.escape
    rows = "".join(
        f'<tr data-client="{e(client)}" data-ok="{str(ok).lower()}"><td>{e(client)}</td>'
        f'<td class="mark">{MARK[ok]}</td><td>{e(reason)}</td></tr>'
        for client, ok, reason in verdict_rows(report))
    head = (f'<p><b>Compatibility: <span class="verdict">{e(verdict)}</span></b> — '
            f'{e(str(report.get("file", "")))}: {e(str(report.get("family", "?")))}, '
            f'{e(str(report.get("modules", 0)))} modules, {e(str(report.get("algo") or "?"))}</p>')
    table = ('<table class="client-verdicts"><thead><tr><th>client</th><th></th><th>why</th></tr></thead>'
             f"<tbody>{rows}</tbody></table>")
    findings = "".join(f"<li>[{e(f['severity'])}] {e(f['code'])}: {e(f['message'])}</li>"
                       for f in report.get("findings") or [])
    details = f"<details><summary>Details ({len(report.get('findings') or [])} findings)</summary><ul>{findings}</ul></details>"
    return f'<div class="compat-report">{head}{table}{details}</div>'
