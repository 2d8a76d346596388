"""The training step's parts: the loop, optimizer and schedule, conditioning, previews."""
