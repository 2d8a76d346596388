"""Where the frozen VAE and text encoders live once the caches hold everything they make.

With latents cached the VAE never runs in a step, and neither does a text encoder that is not trained
when captions are cached. Such parts then leave the training device: to the CPU while previews may still
need them (each preview round brings them back for its duration; `on_device`), or freed when nothing will
(previews off, or not this process's job). A trained text encoder, or one whose captions are not cached
(shuffled tags, cache_text off), runs every step and stays. On a CPU device "off the device" is where they
already are, so only freeing saves memory there."""
from __future__ import annotations

import ctypes
import ctypes.util
from contextlib import contextmanager
from typing import Callable

import torch

OFF_DEVICE = "cpu"


def idle_parts(base, network, dataset) -> dict[str, torch.nn.Module]:
    """{name: module} of the frozen parts a training step does not run, given the dataset's caches."""
    enc = dataset.encodings
    parts = {}
    if enc.latent_cache is not None:
        parts["vae"] = base.vae
    if enc.text_cache is not None:
        parts.update({f"text_encoder{i}": te for i, te in enumerate(base.text_encoders)
                      if i not in network.text_encoders})
    return parts


def free(module: torch.nn.Module) -> None:
    """Drop a module's weights (parameters and buffers go to the meta device: shapes kept, no storage)."""
    module.to("meta")


def return_freed_memory(device: str) -> None:
    """Hand freed memory back to the system: CUDA's cache, and glibc's heap (freed weights otherwise stay
    in the process's RSS until malloc reuses them)."""
    if device.split(":")[0] == "cuda":
        torch.cuda.empty_cache()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to trim
        pass


class FrozenParts:
    """The idle frozen parts of a run and where they are: "resident" (on the training device, until the
    caches are full), then "offloaded" (on the CPU, `keep` = previews may need them) or "freed"."""

    def __init__(self, parts: dict[str, torch.nn.Module], device: str, keep: bool,
                 log: Callable[[str], None] = lambda msg: None):
        self.parts, self.device, self.keep, self.log = parts, device, keep, log
        self.state = "resident"

    @property
    def on_cpu_already(self) -> bool:
        return self.device.split(":")[0] == OFF_DEVICE

    def release(self) -> None:
        """The caches hold everything: move the idle parts off the device, or free them (once)."""
        if self.state != "resident" or not self.parts:
            return
        move = (lambda m: m.to(OFF_DEVICE)) if self.keep else free
        for name, m in list(self.parts.items()):
            if self.keep and self.on_cpu_already:
                continue
            try:
                move(m)
            except Exception as e:  # e.g. a 4-bit (QLoRA) text encoder that will not move: it stays, working
                self.log(f"frozen part {name} stays on {self.device} ({type(e).__name__}: {e})")
                m.to(self.device)
                del self.parts[name]
        self.state = "offloaded" if self.keep else "freed"
        return_freed_memory(self.device)
        where = {"offloaded": f"moved to the {OFF_DEVICE} between previews" if not self.on_cpu_already
                 else "kept on the CPU for previews", "freed": "freed (no previews need them)"}[self.state]
        self.log(f"frozen parts {', '.join(self.parts)}: {where}")

    def free_early(self, modules: dict[str, torch.nn.Module]) -> None:
        """Free idle modules before the rest of the parts can go (encoding on first use: the text encoders
        and the VAE's decoder while the VAE's encoder still works), when nothing else will need them."""
        if self.keep or self.state != "resident" or not modules:
            return
        for m in modules.values():
            free(m)
        return_freed_memory(self.device)
        self.log(f"frozen parts {', '.join(modules)}: freed before step 1 (only the VAE's encoder still runs)")

    @contextmanager
    def on_device(self):
        """The offloaded parts back on the training device for the duration (a preview round)."""
        moved = self.state == "offloaded" and not self.on_cpu_already
        if moved:
            for m in self.parts.values():
                m.to(self.device)
        try:
            yield
        finally:
            if moved:
                for m in self.parts.values():
                    m.to(OFF_DEVICE)
                return_freed_memory(self.device)
