"""A run's sample browser: every preview in one grid, rows = steps (the base images first), columns =
prompts. The arrow keys move across prompts and steps, Enter or a click shows the image full size with
the A1111 parameters written into it, Escape closes it. Built from the run's sample events, so it shows
what the trainer reported (a resumed round that drew a step again shows the newer images)."""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from trainer.run.events import RunView

BASE_ROW = -1  # the row key of the base images (drawn once per run, adapter off)
CELL = "border:none;padding:3px 4px;vertical-align:middle"


@dataclass(frozen=True)
class Sample:
    path: Path
    step: int
    kind: str
    prompt: str
    seed: int | None

    def parameters(self) -> str:
        """The A1111 parameters the trainer wrote into the PNG ('' if the file has none or is unreadable)."""
        try:
            with Image.open(self.path) as im:
                return str(im.text.get("parameters", ""))
        except (OSError, ValueError):
            return ""


@dataclass
class SampleGrid:
    prompts: list[str]                        # column j: prompt j of the run's preview rounds
    rows: list[tuple[int, list[Sample | None]]]  # (step or BASE_ROW, one cell per prompt), base row first

    @property
    def count(self) -> int:
        return sum(c is not None for _, cells in self.rows for c in cells)


def sample_grid(run_dir: Path) -> SampleGrid:
    """The grid of `run_dir`'s previews that are still on disk."""
    run_dir = Path(run_dir)
    found: dict[tuple[int, int], Sample] = {}
    prompts: dict[int, str] = {}
    for ev in RunView(run_dir).update().samples:
        path = run_dir / str(ev.get("path", ""))
        if not ev.get("path") or not path.is_file():
            continue
        j = int(ev.get("index") or 0)
        kind = ev.get("kind", "adapter")
        step = BASE_ROW if kind == "base" else int(ev.get("step") or 0)
        prompts[j] = str(ev.get("prompt", ""))
        found[(step, j)] = Sample(path, step, kind, prompts[j], ev.get("seed"))
    cols = sorted(prompts)
    steps = sorted({s for s, _ in found})  # BASE_ROW sorts first
    return SampleGrid([prompts[j] for j in cols], [(s, [found.get((s, j)) for j in cols]) for s in steps])


def _row_label(step: int) -> str:
    return "base" if step == BASE_ROW else f"step {step}"


def grid_html(run_dir: Path | None) -> str:
    """The grid as an HTML table (#samples-grid) with the full-size view beside it; '' without previews."""
    grid = sample_grid(run_dir) if run_dir else SampleGrid([], [])
    if not grid.count:
        return "<p id='samples-none'>This run has no previews yet.</p>"
    head = "".join(f'<th scope="col" style="{CELL}" title="{html.escape(p)}">prompt {j + 1}: '
                   f'{html.escape(p[:60])}</th>' for j, p in enumerate(grid.prompts))
    body = []
    for r, (step, cells) in enumerate(grid.rows):
        tds = []
        for c, s in enumerate(cells):
            if s is None:
                tds.append(f'<td style="{CELL}" data-r="{r}" data-c="{c}"></td>')
                continue
            src = f"/gradio_api/file={quote(str(s.path))}"  # runs/ is one of the server's allowed paths
            label = f"{_row_label(step)} · prompt {c + 1} · seed {s.seed}"
            tds.append(f'<td class="sample-cell" style="{CELL}" data-r="{r}" data-c="{c}" data-step="{step}" '
                       f'data-src="{html.escape(src)}" data-label="{html.escape(label)}" '
                       f'data-params="{html.escape(s.parameters())}">'
                       f'<img src="{html.escape(src)}" alt="{html.escape(label)}" loading="lazy" '
                       f'style="width:128px;height:auto;image-rendering:auto"></td>')
        body.append(f'<tr style="border:none"><th scope="row" style="{CELL};text-align:left">'
                    f'{_row_label(step)}</th>{"".join(tds)}</tr>')
    return (f'<p style="font-size:13px;color:#6b7280">{len(grid.rows)} row(s) × {len(grid.prompts)} prompt(s). '
            "Keys: ← → prompts, ↑ ↓ steps, Enter full size with its parameters, Esc closes.</p>"
            f'<table id="samples-grid" data-run="{html.escape(Path(run_dir).name)}" tabindex="0" '
            'style="border:none;border-collapse:collapse;width:auto">'
            f'<thead><tr style="border:none"><th style="{CELL}"></th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>'
            '<div id="samples-full" hidden style="margin-top:8px"><div id="samples-full-label"></div>'
            '<img id="samples-full-img" style="max-width:90%;height:auto">'
            '<pre id="samples-full-params" style="white-space:pre-wrap;font-size:12px"></pre></div>')


# Installed once per page; the grid's HTML is replaced when another run is picked, so every handler looks
# the table up again. The selection is a class on a cell, kept across a re-render by its row and column.
KEYS_JS = """
if (!window.__atelierSampleKeys) {
  window.__atelierSampleKeys = true;
  const grid = () => document.querySelector('#samples-grid');
  const cell = (r, c) => grid() && grid().querySelector(`td[data-r="${r}"][data-c="${c}"]`);
  const select = (td) => {
    if (!td) return;
    grid().querySelectorAll('td.sel').forEach((x) => { x.classList.remove('sel'); x.style.outline = ''; });
    td.classList.add('sel');
    td.style.outline = '3px solid #4f46e5';
    td.scrollIntoView({block: 'nearest', inline: 'nearest'});
  };
  const full = (td) => {
    const box = document.querySelector('#samples-full');
    if (!td || !td.dataset.src || !box) return;
    document.querySelector('#samples-full-img').src = td.dataset.src;
    document.querySelector('#samples-full-label').textContent = td.dataset.label;
    document.querySelector('#samples-full-params').textContent = td.dataset.params;
    box.hidden = false;
  };
  document.addEventListener('click', (e) => {
    const td = e.target.closest && e.target.closest('#samples-grid td[data-r]');
    if (td) { select(td); full(td); }
  });
  document.addEventListener('keydown', (e) => {
    const g = grid();
    if (!g || g.offsetParent === null) return;
    const t = e.target || {};
    if (t.tagName === 'TEXTAREA' || t.tagName === 'INPUT' || t.isContentEditable) return;
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    const box = document.querySelector('#samples-full');
    if (e.key === 'Escape' && box) { box.hidden = true; return; }
    let sel = g.querySelector('td.sel');
    const moves = {ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0]};
    if (e.key === 'Enter' && sel) { e.preventDefault(); full(sel); return; }
    if (!(e.key in moves)) return;
    e.preventDefault();
    if (!sel) { select(cell(0, 0)); return; }
    const [dr, dc] = moves[e.key];
    const next = cell(+sel.dataset.r + dr, +sel.dataset.c + dc);
    if (next) {
      select(next);
      if (box && !box.hidden) full(next);
    }
  });
}
"""
