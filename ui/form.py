"""The training form, generated from the config schema: one widget per option, grouped by section,
simple options first and advanced ones folded away. Presets and saved configs fill it."""
from __future__ import annotations

from typing import Any, get_origin

import gradio as gr
from pydantic import ValidationError

from trainer.config import GROUPS, ConfigError, TrainConfig, deep_merge, field_meta, iter_fields

# options the Train tab sets with its own widgets: base picker, dataset chooser, and the run name (the adapter
# is named after its run, so a new concept is never saved under the last preset's name)
SEPARATE = {"model.base", "dataset.path", "saving.output_name"}


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
        # no minimum/maximum here: Gradio would refuse out-of-range input with a fading toast that names no
        # field; the range is in the help text and form_problems() names the field and stays until fixed
        return gr.Number(value=default, precision=0 if ann is int else None, **common)
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


def labels() -> dict[str, str]:
    """"section.key" → the label the form shows for it."""
    return {f"{s}.{k}": field_meta(f)["label"] or f"{s}.{k}" for s, k, f, _ in iter_fields()}


def _problem_text(err: dict, names: dict[str, str]) -> str:
    """One validation error in the form's words: the field's label, then the reason."""
    key = ".".join(str(p) for p in err["loc"])
    ctx, kind = err.get("ctx") or {}, err["type"]
    reason = {"greater_than_equal": f"must be at least {ctx.get('ge')}",
              "less_than_equal": f"must be at most {ctx.get('le')}",
              "greater_than": f"must be above {ctx.get('gt')}", "less_than": f"must be below {ctx.get('lt')}",
              "missing": "is empty"}.get(kind, err["msg"].removeprefix("Value error, "))
    if key in names:
        return f"{names[key]}: {reason}"
    # a check across fields (loc = the section or nothing): its message names the options by key
    for k, label in sorted(names.items(), key=lambda kv: -len(kv[0])):
        reason = reason.replace(k, f"{label} ({k})")
    return reason


def values_to_config(keys: list[str], values: list[Any], extra: dict[str, Any] | None = None) -> TrainConfig:
    """Form values (+ the separate widgets' values) → a validated config. ConfigError names each field
    by the label the form shows (never the internal section.key alone)."""
    anns, names = _annotations(), labels()
    data: dict[str, dict] = {}
    empty = []
    for key, value in zip(keys, values):
        ann = anns[key]
        if get_origin(ann) is list:
            value = [line.strip() for line in str(value or "").splitlines() if line.strip()]
        elif ann in (int, float) and value in (None, ""):
            empty.append(f"{names[key]}: is empty")
            continue
        elif ann is int:
            value = int(value)
        section, name = key.split(".", 1)
        data.setdefault(section, {})[name] = value
    for key, value in (extra or {}).items():
        section, name = key.split(".", 1)
        data.setdefault(section, {})[name] = value
    if empty:
        raise ConfigError("; ".join(empty))
    try:
        return TrainConfig.model_validate(deep_merge(TrainConfig().model_dump(mode="python"), data))
    except ValidationError as e:
        raise ConfigError("; ".join(_problem_text(err, names) for err in e.errors())) from None


def config_to_values(cfg: TrainConfig, keys: list[str]) -> list[Any]:
    dump = cfg.model_dump(mode="python")
    out = []
    for key in keys:
        section, name = key.split(".", 1)
        v = dump[section][name]
        out.append("\n".join(v) if isinstance(v, list) else v)
    return out
