"""The spine, end to end: the CLI trains a tiny model in a subprocess and writes a kohya adapter."""
import math
import re

from safetensors import safe_open

from tests.helpers import events, expected_rows, make_dataset, run_in_process, run_trainer, write_config

ORDER = ["started", "step", "finished"]


def _tiny_expected_names(family: str, text_encoder: bool) -> set[str]:
    """The default targets of the tiny model, named by the same rules as lora_keys/sd15.tsv."""
    from trainer.models.tiny import build_tiny
    from trainer.adapter.network import TEXT_ENCODER, UNET_ATTENTION, matches

    b = build_tiny(family)
    names = {"lora_unet_" + n.replace(".", "_") for n, _ in b.unet.named_modules() if matches(UNET_ATTENTION, n)}
    if text_encoder:
        for n, _ in b.text_encoders[0].named_modules():
            if matches(TEXT_ENCODER, n):
                n = n if n.startswith("text_model.") else "text_model." + n
                names.add("lora_te_" + n.replace(".", "_"))
    return names


def test_cli_trains_tiny_sd1_and_writes_kohya_adapter(tmp_path):
    data = make_dataset(tmp_path / "data", n=4)
    cfg = write_config(tmp_path / "run", **{"dataset.path": str(data), "network.train_text_encoder": "true",
                                            "schedule.max_train_steps": 6, "sampling.every_n_steps": 3,
                                            "saving.every_n_steps": 3})
    r = run_trainer("train", str(cfg), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    adapter = run / "output" / "tiny-test.safetensors"
    assert adapter.exists()
    with safe_open(str(adapter), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}
        for m in modules:
            assert f.get_tensor(m + ".alpha").ndim == 0
            assert f.get_tensor(m + ".lora_down.weight").shape[0] == 4
    assert modules == _tiny_expected_names("sd1", text_encoder=True)
    # the tiny names follow the real SD1.5 rows once block/layer indices are abstracted
    real = {re.sub(r"\d+", "N", n) for n in expected_rows("sd15.tsv")}
    assert {re.sub(r"\d+", "N", m) for m in modules} <= real
    # a tiny base is SD1-shaped, not SD1.5: the file names the base it fits instead of claiming sd_v1
    assert meta["ss_base_model_version"] == "custom" and meta["ss_atelier_base"] == "tiny:sd1"
    ev = events(run)
    # the first event comes before the heavy imports (trainer/cli.py), then the model loads
    assert ev[0]["type"] == "phase" and ev[0]["phase"] == "loading model"
    # phase: what the trainer is doing, before and between steps; memory: the peaks of the phases it left
    types = [e["type"] for e in ev if e["type"] not in ("phase", "memory")]
    assert types[0] == "started" and types[-1] == "finished" and ev[-1]["status"] == "finished"
    assert [e["seq"] for e in ev] == sorted(e["seq"] for e in ev)
    steps = [e for e in ev if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 7))
    assert all(math.isfinite(e["loss"]) for e in steps)
    assert any(e["type"] == "sample" and e["kind"] == "base" for e in ev)
    assert any(e["type"] == "checkpoint" for e in ev)
    samples = sorted(p.name for p in (run / "samples").glob("*.png"))
    # step 0: the adapter equals the base (B = 0), so only the base images are drawn
    assert "base_p0.png" in samples and "step000000_p0.png" not in samples and "step000006_p0.png" in samples


def test_cli_reports_bad_files_and_trains_on_the_rest(tmp_path):
    data = make_dataset(tmp_path / "data", n=3)
    (data / "broken.png").write_bytes((data / "img00.png").read_bytes()[:60])
    (data / "notes.png").write_text("this is a text file named like an image")
    cfg = write_config(tmp_path / "run", **{"dataset.path": str(data), "schedule.max_train_steps": 2,
                                            "sampling.prompts": []})
    r = run_in_process("train", str(cfg), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [e for e in events(tmp_path / "run") if e["type"] == "warning"]
    files = {w.get("file") for w in warnings}
    assert {"broken.png", "notes.png"} <= files, warnings
    started = next(e for e in events(tmp_path / "run") if e["type"] == "started")
    assert started["images"] == 3


def test_config_error_exits_2_naming_the_field(tmp_path):
    p = tmp_path / "config.toml"
    p.write_text("[network]\nrank = -3\n")
    r = run_trainer("train", str(p))
    assert r.returncode == 2 and "network.rank" in r.stderr


def test_missing_dataset_fails_cleanly(tmp_path):
    cfg = write_config(tmp_path / "run", **{"dataset.path": str(tmp_path / "nope")})
    r = run_in_process("train", str(cfg), "--quiet")
    assert r.returncode == 1
    ev = events(tmp_path / "run")
    assert ev[-1]["type"] == "finished" and ev[-1]["status"] == "failed"
    assert any(e["type"] == "error" and "nope" in e["message"] for e in ev)
    assert not (tmp_path / "run" / "output").exists()
