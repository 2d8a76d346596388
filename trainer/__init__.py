"""LoRA Atelier's trainer: everything that trains, usable without the GUI."""
__version__ = "0.1.0"
