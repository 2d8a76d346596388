"""LoRA Atelier's Gradio studio. It controls runs only through run folders and trainer processes."""
