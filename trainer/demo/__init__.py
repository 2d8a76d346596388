"""The demo: generated shapes data, the concept the demo LoRA learns, and scorers for both."""
