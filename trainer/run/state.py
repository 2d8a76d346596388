"""Resumable training state without pickle: tensors in safetensors, everything else in JSON.

A state is a folder checkpoints/step-NNNNNNNN/ holding adapter.safetensors (trainable weights, fp32),
optimizer.safetensors + state.json (optimizer scalars, LR schedule, RNG, step, data position), and optional
extras (ema.safetensors: the weights' moving average; validation.json: the validation loss there). It is
written under a temporary name, fsynced and renamed; checkpoints/latest is written last, so a crash at
any point leaves the previous state whole and a half-written one is never picked up.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from trainer.run.atomic import atomic_write_text, fsync_dir
from trainer.run.faults import crash_point

LATEST = "latest"


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as "<param id>.<key>" tensors and JSON scalars. A nested dict (bitsandbytes'
    8-bit optimizers keep their quantisation state in one) is flattened with "/" between its keys; its
    tensors are copied, as bitsandbytes shares one quantisation map between all parameters and
    safetensors stores no shared memory."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}

    def put(key: str, v: Any, nested: bool = False) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu()
            tensors[key] = t.clone() if nested else t.contiguous()
        elif isinstance(v, dict):
            for k, inner in v.items():
                put(f"{key}/{k}", inner, nested=True)
        else:
            scalars[key] = v

    for pid, st in sd["state"].items():
        for k, v in st.items():
            put(f"{pid}.{k}", v)
    return tensors, {"scalars": scalars, "param_groups": sd["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, k = key.split(".", 1)
        *parents, leaf = k.split("/")
        node = state.setdefault(int(pid), {})
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _fsync_tree(path: Path) -> None:
    for p in path.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(path)


def save_state(ckpt_dir: Path, step: int, adapter: dict[str, torch.Tensor], optimizer, lr_scheduler,
               info: dict, keep_last: int, extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write the state folder; `extra_tensors` {name: tensors} become <name>.safetensors beside the weights."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    crash_point("enospc", step)
    name = f"step-{step:08d}"
    final = ckpt_dir / name
    tmp = ckpt_dir / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().float().cpu().contiguous() for k, v in adapter.items()}, str(tmp / "adapter.safetensors"))
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda{i}"] = s
    for k, v in info.pop("generators", {}).items():
        rng[f"gen_{k}"] = v
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    save_file(rng, str(tmp / "rng.safetensors"))
    for extra, tensors in (extra_tensors or {}).items():
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()},
                  str(tmp / f"{extra}.safetensors"))
    meta = {"step": step, "optimizer": opt_meta, "lr_scheduler": lr_scheduler.state_dict(), **info}
    (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")
    _fsync_tree(tmp)
    crash_point("state-written", step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(ckpt_dir)
    crash_point("state-renamed", step)
    atomic_write_text(ckpt_dir / LATEST, name)
    # old states go only once the new one is complete and pointed to
    states = sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir())
    for old in states[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def clean_partial(ckpt_dir: Path) -> list[str]:
    removed = []
    if ckpt_dir.exists():
        for p in ckpt_dir.glob(".step-*.tmp"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def _valid(state_dir: Path) -> bool:
    return all((state_dir / f).is_file() for f in ("adapter.safetensors", "optimizer.safetensors",
                                                    "rng.safetensors", "state.json"))


def latest_state(ckpt_dir: Path) -> Path | None:
    """The newest complete state: the 'latest' pointer if it names a whole state, else the newest whole one."""
    try:
        name = (ckpt_dir / LATEST).read_text().strip()
        if name and _valid(ckpt_dir / name):
            return ckpt_dir / name
    except OSError:
        pass
    for p in sorted(ckpt_dir.glob("step-*"), reverse=True):
        if p.is_dir() and _valid(p):
            return p
    return None


def load_state(state_dir: Path) -> tuple[dict, dict, dict, dict]:
    """(adapter tensors, optimizer state_dict, rng tensors, info) of a state folder."""
    meta = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    adapter = load_file(str(state_dir / "adapter.safetensors"))
    opt = _unflatten_optimizer(load_file(str(state_dir / "optimizer.safetensors")), meta.pop("optimizer"))
    rng = load_file(str(state_dir / "rng.safetensors"))
    return adapter, opt, rng, meta


def load_extra_tensors(state_dir: Path, name: str) -> dict[str, torch.Tensor] | None:
    """The state's <name>.safetensors (see save_state's extra_tensors), or None when it has none."""
    path = state_dir / f"{name}.safetensors"
    return load_file(str(path)) if path.is_file() else None
