"""Before launch: settings that do not fit the chosen base model, in words a user understands.

Torch-free (reads a safetensors header or a diffusers folder's configs, never a tensor), so the studio
calls it on its estimate, and the trainer emits each line as a warning event before loading the model
(the CLI prints those). Checked:
- a v-prediction config (a v-pred preset) on a file with no v-prediction marker, or an epsilon config on
  a file that says v-prediction: trained with the wrong target, a LoRA gives empty or grey images;
- zero terminal SNR on an epsilon model, or switched off on a file marked `ztsnr`;
- clip skip above 1 on SDXL, which already conditions on the penultimate layer (what "clip skip 2" means
  for SD1.5 and in A1111), so it is not the no-op the guides' "clip skip 2" suggests.
"""
from __future__ import annotations

from dataclasses import dataclass

from trainer.models.detect import (FamilyDetectionError, _read_json, detect_family, detect_family_from_folder,
                                   detect_prediction_type, detect_zero_terminal_snr, header_keys_and_shapes)
from trainer.models.spec import display_name, parse_base


@dataclass(frozen=True)
class ModelFacts:
    """What a base model says about itself; prediction_type and zero_terminal_snr as detected on "auto"."""
    family: str  # "sd1" | "sd2" | "sdxl" | "" (unknown)
    prediction_type: str = "epsilon"
    zero_terminal_snr: bool = False
    from_file: bool = False  # read from the weights (a marker can be trusted), not just from the spec


def model_facts(base: str) -> ModelFacts:
    """The family, prediction type and zero-terminal-SNR of `base` (a model.base string), from the file
    header or folder configs; tiny/random specs give their family; unknown otherwise (hub ids)."""
    try:
        spec = parse_base(base)
    except ValueError:
        return ModelFacts("")  # the loader names what is wrong with the spec
    if spec.kind in ("tiny", "random"):
        return ModelFacts("sd2" if spec.family == "sd2-v" else spec.family,
                          "v_prediction" if spec.family == "sd2-v" else "epsilon")
    path = spec.path
    try:
        if path is not None and path.is_dir():
            fam, pred = detect_family_from_folder(path)
            sched = _read_json(path / "scheduler" / "scheduler_config.json")
            return ModelFacts(fam, pred, bool(sched.get("rescale_betas_zero_snr")), from_file=True)
        if path is not None and path.suffix.lower() == ".safetensors" and path.is_file():
            shapes, meta = header_keys_and_shapes(path)
            fam = detect_family(shapes)
            return ModelFacts(fam, detect_prediction_type(fam, shapes, meta, name=path.name),
                              detect_zero_terminal_snr(shapes, meta), from_file=True)
    except (FamilyDetectionError, OSError, ValueError):
        pass  # the loader reports an unreadable file with its reason
    return ModelFacts("")


def launch_warnings(cfg, facts: ModelFacts | None = None) -> list[str]:
    """Problems of `cfg` (a TrainConfig) with its base model, one sentence each (see the module doc)."""
    m = cfg.model
    facts = facts or model_facts(m.base)
    name = display_name(m.base) if facts.from_file else m.base
    out = []
    if facts.from_file and m.prediction_type == "v_prediction" and facts.prediction_type == "epsilon":
        out.append(f"model.prediction_type is v_prediction (a v-pred preset), but {name} carries no v-prediction "
                   "marker (no v_pred tensor, no ModelSpec prediction_type 'v'): it looks like an epsilon model "
                   "(Illustrious, NoobAI eps, Pony, SDXL, SD1.5). Trained for the wrong target the LoRA gives "
                   "empty or grey images: pick the model's epsilon preset, unless you know this file is v-pred.")
    if facts.from_file and m.prediction_type == "epsilon" and facts.prediction_type == "v_prediction":
        out.append(f"model.prediction_type is epsilon, but {name} is a v-prediction model (its v_pred marker or "
                   "ModelSpec says so). Trained for the wrong target the LoRA gives empty or grey images: pick "
                   "the v-pred preset (NoobAI-XL v-pred) or set the prediction type to auto.")
    pred = facts.prediction_type if m.prediction_type == "auto" else m.prediction_type
    ztsnr = facts.zero_terminal_snr if m.zero_terminal_snr == "auto" else m.zero_terminal_snr == "on"
    if ztsnr and pred == "epsilon" and (facts.family or m.prediction_type == "epsilon"):
        out.append("zero terminal SNR is on for an epsilon-prediction model: at the last step the input is pure "
                   "noise and the noise is all an epsilon model can predict, so it cannot learn the image there. "
                   "Use it with v-prediction only.")
    if facts.from_file and facts.zero_terminal_snr and m.zero_terminal_snr == "off":
        out.append(f"{name} was trained with zero terminal SNR (its ztsnr marker), but model.zero_terminal_snr is "
                   "off: the LoRA learns on a different noise schedule than the model samples with. Set it to auto.")
    family = facts.family if m.family == "auto" else m.family
    if family == "sdxl" and m.clip_skip > 1:
        deeper = m.clip_skip - 1
        out.append(f"clip skip {m.clip_skip} on an SDXL model: SDXL already uses the penultimate text-encoder layer "
                   "(what 'clip skip 2' means for SD1.5 and in A1111, and what Pony guides ask for), so this goes "
                   f"{deeper} layer{'s' if deeper > 1 else ''} deeper than SDXL clients condition on. Set 1 unless "
                   "you mean it.")
    return out

