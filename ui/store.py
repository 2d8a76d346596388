"""The run store the studio uses: the one table of trainer/run/store.py, shared with `python -m trainer queue`."""
from trainer.run.store import QUEUE_STATES, QUEUED, QueueRefused, RunStore, shown_state

__all__ = ["QUEUE_STATES", "QUEUED", "QueueRefused", "RunStore", "shown_state"]
