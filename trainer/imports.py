"""The heavy libraries: which of them load, and what they may print to users.

- bitsandbytes costs seconds to import (it pulls in torch's compiler) and, on CPUs with AVX512-BF16,
  prints "Failed to load CPU gemm_4bit_forward …" when its optional kernels are not installed. peft
  imports it whenever it is installed, so a process that will not quantise hides it from peft
  (`keep_bitsandbytes_unloaded`) before anything imports peft.
- transformers warns that image processors fall back to PIL without torchvision (we use none of them);
  diffusers and transformers draw progress bars while loading a model. Neither is news to a user.
Torch-free: the CLI calls these before any heavy import.
"""
from __future__ import annotations

import logging
import sys

# (logger, words) of notes that say nothing a user can act on
_LIBRARY_NOTES = (
    ("transformers.utils.import_utils", "requires torchvision (not installed)"),
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
)


class _DropNote(logging.Filter):
    def __init__(self, words: str):
        super().__init__()
        self.words = words

    def filter(self, record: logging.LogRecord) -> bool:
        return self.words not in record.getMessage()


def quiet_library_notes() -> None:
    """Drop the library notes above (filters on the emitting loggers; nothing is imported)."""
    for name, words in _LIBRARY_NOTES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNote) and f.words == words for f in logger.filters):
            logger.addFilter(_DropNote(words))


def quiet_progress_bars() -> None:
    """No model-loading progress bars from diffusers and transformers (the trainer reports its phases)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def needs_bitsandbytes(cfg) -> bool:
    """A run that quantises its base (QLoRA) or uses the 8-bit optimizer."""
    return cfg.network.quantize_base == "nf4" or cfg.optimizer.name == "adamw8bit"


def keep_bitsandbytes_unloaded() -> None:
    """Make `import bitsandbytes` fail fast in this process, so that peft and diffusers see it as not
    installed. Only before anything has imported it; a whole-process decision (peft caches the answer)."""
    if "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]
