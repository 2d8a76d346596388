"""Preview prompts in each model family's own style, for runs whose config sets no prompts.

A family preset names its style (sampling.style); the style fills what the user left unset: the prompts
(with the trigger words put in), the negative prompt, and the size (1024² for SDXL families, their
training size; 512² for SD1.5, whose UNet repeats subjects on larger squares). The prompt conventions
are each family's own, from the model cards: Pony V6's score tags, Illustrious' and NoobAI's Danbooru
tags with quality tags ("masterpiece, best quality"; NoobAI adds "newest, absurdres" and negates "old,
early"), plain sentences for photographic models. Torch-free (the studio shows them).
"""
from __future__ import annotations

from dataclasses import dataclass

TRIGGER = "{trigger}"


@dataclass(frozen=True)
class Style:
    prompts: tuple[str, ...]
    negative: str
    size: int


_ANIME_NEG = "lowres, worst quality, low quality, bad anatomy, bad hands, jpeg artifacts, signature, watermark"
_PHOTO_NEG = "cartoon, anime, illustration, painting, 3d render, blurry, lowres, deformed, bad anatomy"
STYLES: dict[str, Style] = {
    "illustrious": Style((f"{TRIGGER}, 1girl, solo, upper body, looking at viewer, masterpiece, best quality",
                          f"{TRIGGER}, 1girl, solo, full body, standing, outdoors, masterpiece, best quality"),
                         _ANIME_NEG, 1024),
    "noobai": Style((f"{TRIGGER}, 1girl, solo, upper body, looking at viewer, masterpiece, best quality, "
                     "newest, absurdres",
                     f"{TRIGGER}, 1girl, solo, full body, standing, outdoors, masterpiece, best quality, newest"),
                    "worst quality, low quality, old, early, lowres, bad anatomy, bad hands, signature, "
                    "username, logo", 1024),
    "pony": Style((f"score_9, score_8_up, score_7_up, {TRIGGER}, 1girl, solo, upper body, looking at viewer",
                   f"score_9, score_8_up, score_7_up, {TRIGGER}, 1girl, solo, full body, standing, outdoors"),
                  "score_4, score_5, score_6, worst quality, low quality, bad anatomy, bad hands", 1024),
    "sdxl-photo": Style((f"{TRIGGER}, a photo of a person, natural light, 50mm, detailed skin",
                         f"{TRIGGER}, a full-body photo of a person standing in a street, golden hour"),
                        _PHOTO_NEG, 1024),
    "sd15-anime": Style((f"masterpiece, best quality, {TRIGGER}, 1girl, solo, upper body, looking at viewer",
                         f"masterpiece, best quality, {TRIGGER}, 1girl, solo, full body, standing, outdoors"),
                        _ANIME_NEG, 512),
    "sd15-photo": Style((f"{TRIGGER}, a photo of a person, natural light, detailed skin",
                         f"{TRIGGER}, a full-body photo of a person standing in a street, golden hour"),
                        _PHOTO_NEG, 512),
}


def fill_trigger(prompt: str, trigger: str) -> str:
    """The prompt with the trigger words in place of {trigger}; without trigger words, the slot and its
    comma go."""
    if trigger.strip():
        return prompt.replace(TRIGGER, trigger.strip())
    return ", ".join(p for p in (x.strip() for x in prompt.split(",")) if p and p != TRIGGER)


@dataclass(frozen=True)
class PreviewPlan:
    prompts: list[str]
    negative: str
    size: int


def preview_plan(cfg) -> PreviewPlan:
    """What previews draw for a TrainConfig: its own prompts, negative and size; what it leaves unset
    comes from its style (none: nothing), and the size falls back to the training resolution."""
    s = cfg.sampling
    style = STYLES.get(s.style)
    prompts = list(s.prompts)
    if not prompts and style:
        prompts = [fill_trigger(p, cfg.saving.trigger_phrase) for p in style.prompts]
    negative = s.negative_prompt or (style.negative if style else "")
    size = s.size or (style.size if style else 0) or cfg.dataset.resolution
    return PreviewPlan(prompts, negative, size)
