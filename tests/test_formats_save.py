"""save_adapter: hashes on the bytes written, full and minimal metadata, no local paths, atomic and
never overwriting; meta edits keep sshs_model_hash."""
import base64
import hashlib
import io
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from trainer.config import TrainConfig
from trainer.formats import safetensors_io as sio
from trainer.formats.kohya_export import ExportError
from trainer.formats.metadata import MetadataError, build_metadata
from trainer.formats.meta_edit import edit_metadata
from trainer.formats.save import save_adapter
from trainer.models.tiny import build_tiny
from trainer.adapter.network import build_network


def png_bytes(color=(200, 30, 30)):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


def run_facts(**over):
    facts = {"family": "sd1", "base_name": "/home/someone/models/v1-5-pruned.safetensors", "base_hash": "ab" * 32,
             "folders": {"/data/sets/10_zkq cat": {"n_repeats": 10, "img_count": 3}},
             "tag_frequency": {"10_zkq cat": {"zkq": 3, "cat": 2}},
             "bucket_info": {"buckets": {"0": {"resolution": [512, 512], "count": 3}}, "mean_img_ar_error": 0.0},
             "num_images": 30, "steps": 12, "epochs": 2, "started_at": 1700000000.0, "finished_at": 1700000100.5,
             "session_id": "42", "thumbnail_png": png_bytes()}
    facts.update(over)
    return facts


def config():
    cfg = TrainConfig()
    cfg.saving.output_name = "zkq-cat"
    cfg.saving.trigger_phrase = "zkq cat"
    cfg.saving.description = "a test adapter"
    cfg.network.rank, cfg.network.alpha = 4, 2.0
    cfg.network.train_text_encoder = True
    return cfg


@pytest.fixture
def trained():
    cfg = config()
    base = build_tiny("sd1")
    net = build_network(base, cfg.network)
    with torch.no_grad():
        for p in net.all_params():
            p.add_(0.01)
    return cfg, base, net


def test_save_adapter_hashes_and_metadata(trained, tmp_path):
    cfg, base, net = trained
    meta = build_metadata(cfg, run_facts(), minimal=False)
    res = save_adapter(tmp_path / "zkq-cat.safetensors", base, net, meta, "fp16")
    data = res.path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert res.model_hash == hashlib.sha256(data[8 + n:]).hexdigest()
    assert res.sha256 == hashlib.sha256(data).hexdigest() and res.autov2 == res.sha256[:10]
    hdr = sio.read_header(res.path)
    md = hdr.metadata
    assert md["sshs_model_hash"] == res.model_hash == sio.model_hash(res.path)
    assert md["sshs_legacy_hash"] == res.legacy_hash == sio.legacy_hash(res.path)
    assert md["ss_base_model_version"] == "sd_v1" and md["ss_network_module"] == "networks.lora"
    assert md["ss_network_dim"] == "4" and md["ss_network_alpha"] == "2.0"
    assert md["ss_sd_model_name"] == "v1-5-pruned.safetensors" and md["ss_new_sd_model_hash"] == "ab" * 32
    assert json.loads(md["ss_dataset_dirs"]) == {"10_zkq cat": {"n_repeats": 10, "img_count": 3}}
    assert json.loads(md["ss_tag_frequency"]) == {"10_zkq cat": {"zkq": 3, "cat": 2}}
    assert json.loads(md["ss_bucket_info"])["buckets"]["0"]["count"] == 3
    assert md["ss_steps"] == "12" and md["ss_epoch"] == "2" and md["ss_session_id"] == "42"
    assert md["ss_training_started_at"] == "1700000000.0" and md["ss_num_train_images"] == "30"
    assert md["modelspec.sai_model_spec"] == "1.0.1"
    assert md["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert md["modelspec.title"] == "zkq-cat" and md["modelspec.trigger_phrase"] == "zkq cat"
    assert md["modelspec.resolution"] == "512x512" and md["modelspec.prediction_type"] == "epsilon"
    thumb = md["modelspec.thumbnail"]
    assert thumb.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(thumb.split(",", 1)[1]))).size == (32, 32)
    joined = json.dumps(md)
    assert "/home/" not in joined and "/data/" not in joined
    for k, t in hdr.tensors.items():
        assert t["dtype"] == ("F32" if k.endswith(".alpha") else "F16")


def test_minimal_metadata_and_v_and_sdxl_names():
    cfg = config()
    md = build_metadata(cfg, run_facts(family="sd2-v"), minimal=True)
    assert md["ss_base_model_version"] == "sd_v2_v" and md["ss_v2"] == "True"
    assert md["modelspec.prediction_type"] == "v"
    assert "ss_tag_frequency" not in md and "ss_dataset_dirs" not in md and "ss_learning_rate" not in md
    assert "ss_session_id" not in md and "ss_training_started_at" not in md
    xl = build_metadata(cfg, run_facts(family="sdxl"), minimal=True)
    assert xl["ss_base_model_version"] == "sdxl_base_v1-0"
    assert xl["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"


def test_no_local_paths_in_metadata():
    cfg = config()
    cfg.saving.description = "made from C:\\Users\\someone\\pics"
    with pytest.raises(MetadataError, match="absolute path"):
        build_metadata(cfg, run_facts(), minimal=True)


def test_never_overwrites_and_refuses_non_finite(trained, tmp_path):
    cfg, base, net = trained
    meta = build_metadata(cfg, run_facts(), minimal=True)
    path = tmp_path / "a.safetensors"
    first = save_adapter(path, base, net, meta, "fp16")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="a.safetensors"):
        save_adapter(path, base, net, meta, "fp16")
    assert path.read_bytes() == before
    save_adapter(path, base, net, meta, "bf16", overwrite=True)
    assert path.read_bytes() != before and sio.model_hash(path) != first.model_hash
    with torch.no_grad():
        net.params_unet[1].fill_(1e6)  # overflows fp16
    with pytest.raises(ExportError, match="non-finite"):
        save_adapter(tmp_path / "b.safetensors", base, net, meta, "fp16")
    assert not (tmp_path / "b.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temp files left


def test_meta_edit_keeps_model_hash_and_recomputes_the_rest(trained, tmp_path):
    cfg, base, net = trained
    src = save_adapter(tmp_path / "a.safetensors", base, net, build_metadata(cfg, run_facts(), True), "fp16")
    out = edit_metadata(src.path, tmp_path / "b.safetensors",
                        {"title": "Zkq Cat v2", "trigger": "zkq cat, stripes", "description": "edited"},
                        thumbnail=png_bytes((0, 0, 255)))
    md = sio.read_header(out.path).metadata
    assert md["modelspec.title"] == "Zkq Cat v2" and md["modelspec.trigger_phrase"] == "zkq cat, stripes"
    assert md["sshs_model_hash"] == src.model_hash == out.model_hash == sio.model_hash(out.path)
    assert md["sshs_legacy_hash"] == sio.legacy_hash(out.path)
    assert out.sha256 != src.sha256
    a, _ = sio.load_file_checked(src.path)
    b, _ = sio.load_file_checked(out.path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FileExistsError):
        edit_metadata(src.path, out.path, {"title": "x"})
    # the CLI: refuses to overwrite, writes a new file otherwise
    cli = [sys.executable, "-m", "trainer", "meta", str(src.path)]
    r = subprocess.run(cli + ["--out", str(out.path), "--set", "title=y"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "refusing to overwrite" in r.stderr
    r = subprocess.run(cli + ["--out", str(tmp_path / "c.safetensors"), "--set", "author=Ann"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sio.read_header(tmp_path / "c.safetensors").metadata["modelspec.author"] == "Ann"
