"""The natural-language captioner: BLIP (transformers' BlipForConditionalGeneration + BlipProcessor) from a
model folder, unconditional captioning, greedy (the same image gets the same sentence)."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from trainer.caption.settings import LENGTH_TOKENS, CaptionSettings
from trainer.config import ConfigError

# and the processor's files (preprocessor_config.json or processor_config.json, the tokenizer's): from_pretrained
# names what is missing
NEEDS = ("config.json",)


class Blip:
    def __init__(self, folder: Path, settings: CaptionSettings):
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        try:
            self.processor = BlipProcessor.from_pretrained(folder)
            self.model = BlipForConditionalGeneration.from_pretrained(folder).eval()
        except (OSError, ValueError) as e:
            raise ConfigError(f"{folder}: not a BLIP captioning model: {e}") from None
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.max_new_tokens = LENGTH_TOKENS[settings.caption_length]
        self._torch = torch

    def caption(self, image: Image.Image) -> str:
        inputs = self.processor(images=image, return_tensors="pt").to(self.device)
        with self._torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        text = self.processor.decode(out[0], skip_special_tokens=True)
        return " ".join(text.split())
