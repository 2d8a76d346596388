"""The training form, generated from the config schema: one widget per option, grouped by section,
simple options first and advanced ones folded away. Presets and saved configs fill it."""
from __future__ import annotations

from typing import Any, get_origin

import gradio as gr

from trainer.config import GROUPS, TrainConfig, deep_merge, field_meta, from_dict, iter_fields

# options the Train tab sets with its own widgets (base picker, dataset chooser)
SEPARATE = {"model.base", "dataset.path"}


def _range_text(meta: dict) -> str:
    if "ge" in meta and "le" in meta:
        fmt = lambda v: f"{int(v):,}" if float(v).is_integer() and abs(v) >= 1 else f"{v:g}"
        return f" ({fmt(meta['ge'])}–{fmt(meta['le'])})"
    return ""


def _widget(key: str, finfo, ann, default: Any) -> gr.components.Component:
    meta = field_meta(finfo)
    label, info = meta["label"] or key, meta["help"] + _range_text(meta)
    common = dict(label=label, info=info, elem_id=f"cfg-{key.replace('.', '-')}")
    if ann is bool:
        return gr.Checkbox(value=default, **common)
    if meta.get("choices"):
        return gr.Dropdown(choices=meta["choices"], value=default, **common)
    if get_origin(ann) is list:
        return gr.Textbox(value="\n".join(default), lines=3, **common)
    if ann in (int, float):
        return gr.Number(value=default, precision=0 if ann is int else None,
                         minimum=meta.get("ge"), maximum=meta.get("le"), **common)
    return gr.Textbox(value=str(default), **common)


def build_form() -> dict[str, gr.components.Component]:
    """Render the form inside the current Blocks context; returns {"section.key": component}."""
    defaults = TrainConfig().model_dump(mode="python")
    by_section: dict[str, list] = {}
    for section, key, finfo, ann in iter_fields():
        if f"{section}.{key}" not in SEPARATE:
            by_section.setdefault(section, []).append((key, finfo, ann))
    widgets: dict[str, gr.components.Component] = {}
    for section, fields in by_section.items():
        simple = [f for f in fields if not field_meta(f[1])["advanced"]]
        advanced = [f for f in fields if field_meta(f[1])["advanced"]]
        with gr.Accordion(GROUPS.get(section, section), open=section in ("network", "schedule", "sampling")):
            # checkboxes in a row of their own: mixed with text fields they get squeezed
            for group in ([f for f in simple if f[2] is not bool], [f for f in simple if f[2] is bool]):
                if group:
                    with gr.Row(equal_height=False):
                        for key, finfo, ann in group:
                            k = f"{section}.{key}"
                            widgets[k] = _widget(k, finfo, ann, defaults[section][key])
            if advanced:
                with gr.Accordion(f"Advanced {GROUPS.get(section, section).lower()}", open=False):
                    with gr.Row(equal_height=False):
                        for key, finfo, ann in advanced:
                            k = f"{section}.{key}"
                            widgets[k] = _widget(k, finfo, ann, defaults[section][key])
    return widgets


def _annotations() -> dict[str, Any]:
    return {f"{s}.{k}": ann for s, k, _, ann in iter_fields()}


def values_to_config(keys: list[str], values: list[Any], extra: dict[str, Any] | None = None) -> TrainConfig:
    """Form values (+ the separate widgets' values) → a validated config; ConfigError names the field."""
    anns = _annotations()
    data: dict[str, dict] = {}
    for key, value in zip(keys, values):
        ann = anns[key]
        if get_origin(ann) is list:
            value = [line.strip() for line in str(value or "").splitlines() if line.strip()]
        elif ann is int and value is not None:
            value = int(value)
        section, name = key.split(".", 1)
        data.setdefault(section, {})[name] = value
    for key, value in (extra or {}).items():
        section, name = key.split(".", 1)
        data.setdefault(section, {})[name] = value
    return from_dict(deep_merge(TrainConfig().model_dump(mode="python"), data), "training form")


def config_to_values(cfg: TrainConfig, keys: list[str]) -> list[Any]:
    dump = cfg.model_dump(mode="python")
    out = []
    for key in keys:
        section, name = key.split(".", 1)
        v = dump[section][name]
        out.append("\n".join(v) if isinstance(v, list) else v)
    return out
