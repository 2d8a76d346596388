"""Agreement between the processes of a multi-process launch (torchrun / accelerate launch).

Every rank trains its own shard of each batch, and every rank must take the same branch at the same
step (stop, sample, save, give up on a non-finite loss), or the collectives hang. A single process is
the same object with a world of one, so the training loop has no multi-process branches."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from trainer.train.setup import TrainingError

COMMANDS = ("stop", "sample_now", "save_now")


class Processes:
    def __init__(self, world: int = 1, rank: int = 0):
        self.world, self.rank = world, rank
        self.is_main = rank == 0  # rank 0 alone writes the run folder
        self.accelerator = None
        self.seen_keys: list[str] = []  # what this rank trained on (the shard report)

    @classmethod
    def from_env(cls) -> "Processes":
        return cls(int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")))

    @property
    def multi(self) -> bool:
        return self.world > 1

    def start(self, device: str) -> str:
        """Join the process group (N processes); returns the device this rank trains on."""
        if not self.multi:
            return device
        from accelerate import Accelerator

        self.accelerator = Accelerator(cpu=device == "cpu")
        return str(self.accelerator.device)

    def wrap(self, model):
        """The module the loss runs through: DDP-wrapped (gradients all-reduced) under N processes."""
        return model if self.accelerator is None else self.accelerator.prepare_model(model)

    def batches(self, epoch_batches, epoch: int, start: int):
        """(epoch, index in epoch, sample indices), continuing from (epoch, start). With N processes each
        micro-step consumes N consecutive batches and this rank takes its own: the shards are disjoint
        and every rank keeps the same position. `epoch_batches(epoch)` lists an epoch's batches."""
        w = self.world
        while True:
            batches = epoch_batches(epoch)
            usable = len(batches) - len(batches) % w
            if usable == 0:
                raise TrainingError("the dataset yields no batch (fewer images than batch size × processes?)")
            for bi in range(start, usable, w):
                yield epoch, bi + w - 1, batches[bi + self.rank]
            epoch, start = epoch + 1, 0

    def agree(self, finite: bool, commands: set[str], stop: bool) -> tuple[bool, set[str]]:
        """One collective per step: the loss was finite on every rank, and the union of the commands
        (rank 0 polls the control file; a signal may have reached any rank)."""
        commands = set(commands) | ({"stop"} if stop else set())
        if not self.multi:
            return finite, commands
        import torch.distributed as dist

        flags = torch.tensor([0.0 if finite else 1.0] + [1.0 if c in commands else 0.0 for c in COMMANDS])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return not flags[0].item(), {c for c, f in zip(COMMANDS, flags[1:].tolist()) if f}

    def record(self, keys: list[str]) -> None:
        if self.multi:
            self.seen_keys.extend(keys)

    def report(self, root: Path, trainable: dict[str, torch.Tensor]) -> None:
        """Under N processes each rank records what it trained on and a digest of its adapter, so a test
        (or a suspicious user) can check that shards were disjoint and the replicas agree."""
        if not self.multi:
            return
        h = hashlib.sha256()
        for k, v in sorted(trainable.items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        out = Path(root) / "ddp"
        out.mkdir(exist_ok=True)
        (out / f"rank{self.rank}.json").write_text(json.dumps(
            {"rank": self.rank, "world": self.world, "adapter_sha256": h.hexdigest(), "keys": self.seen_keys}))

    def leave(self) -> None:
        """Wait until rank 0 has written the adapter, then close the process group: a rank that exits
        with the group open can abort its peer's (gloo) connection mid-save."""
        if not self.multi:
            return
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
