"""Two CPU processes under torchrun (gloo): DDP keeps the replicas equal, the data shards are disjoint,
and only rank 0 writes the run folder's outputs."""
import json
import os
import shutil
import subprocess
import sys

from safetensors import safe_open

from tests.helpers import REPO, events, make_dataset, write_config


def _torchrun(config, run_dir, nproc=2, timeout=600):
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run(cmd + ["--standalone", "--nproc_per_node", str(nproc), "-m", "trainer", "train",
                                 str(config), "--run-dir", str(run_dir), "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def test_two_processes_train_identical_adapters_on_disjoint_shards(tmp_path):
    data = make_dataset(tmp_path / "data", n=8)
    run = tmp_path / "run"
    steps = 4
    cfg = write_config(run, **{"dataset.path": str(data), "schedule.max_train_steps": steps,
                               "sampling.every_n_steps": 0, "sampling.at_start": "false",
                               "saving.every_n_steps": 2, "dataset.batch_size": 1})
    r = _torchrun(cfg, run)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])

    reports = [json.loads((run / "ddp" / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert [rep["rank"] for rep in reports] == [0, 1] and all(rep["world"] == 2 for rep in reports)
    # gradient all-reduce keeps the two replicas' adapters bit-for-bit equal
    assert reports[0]["adapter_sha256"] == reports[1]["adapter_sha256"]
    k0, k1 = reports[0]["keys"], reports[1]["keys"]
    # one sample per step per rank (batch 1, 8 images, 4 steps: each rank sees half an epoch)
    assert len(k0) == len(k1) == steps
    assert not set(k0) & set(k1), "the ranks trained on overlapping samples"
    assert len(set(k0) | set(k1)) == 2 * steps

    # the run folder is written once: one adapter, one event stream without duplicated steps
    adapters = sorted(p.name for p in (run / "output").glob("*.safetensors"))
    assert adapters == ["tiny-test-step000002.safetensors", "tiny-test.safetensors"]
    with safe_open(str(run / "output" / "tiny-test.safetensors"), "pt") as f:
        ups = [f.get_tensor(k) for k in f.keys() if k.endswith("lora_up.weight")]
    # lora_up starts at zero: equal digests of untrained replicas would prove nothing
    assert ups and any(u.abs().max() > 0 for u in ups)
    ev = events(run)
    assert [e["step"] for e in ev if e["type"] == "step"] == list(range(1, steps + 1))
    assert [e["type"] for e in ev].count("started") == 1
    assert ev[-1]["type"] == "finished" and ev[-1]["status"] == "finished"

