"""The training step's parts: the loop (loop.py, the story), its set-up stages (setup.py), the loss
(loss.py), multi-process agreement (processes.py), previews (previews.py, sampling.py), saved states
(checkpoints.py), progress and timing (timing.py), optimizer and schedule (optim.py), conditioning
(conditioning.py) and the device rule (device.py, torch-free)."""
