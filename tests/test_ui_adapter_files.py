"""Adapter files for the Generate tab (checked from the header, torch-free) and the labelled grid image."""
import json
import struct

import numpy as np
import pytest
from PIL import Image

from trainer.tools.grid import GridBlock, compose_grid, strength_label
from ui.adapter_files import AdapterFileError, adapter_choices, describe, import_upload, resolve_choice
from ui.paths import UnsafePath


def safetensors_bytes(names: list[str], meta: dict | None = None) -> bytes:
    """A valid safetensors file: one float32 value per tensor name."""
    header = {n: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, n in enumerate(names)}
    if meta:
        header["__metadata__"] = meta
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * (4 * len(names))


LORA = ["lora_unet_down_blocks_0_attn1_to_q.lora_down.weight", "lora_unet_down_blocks_0_attn1_to_q.lora_up.weight",
        "lora_unet_down_blocks_0_attn1_to_q.alpha", "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]


def test_describe_tells_adapters_from_other_files(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(safetensors_bytes(LORA))
    (tmp_path / "loha.safetensors").write_bytes(safetensors_bytes(["lora_unet_x.hada_w1_a", "lora_unet_x.hada_w1_b"]))
    (tmp_path / "base.safetensors").write_bytes(safetensors_bytes(["model.diffusion_model.input_blocks.0.weight"]))
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 40)
    (tmp_path / "notes.txt").write_text("hello")
    assert describe(tmp_path / "a.safetensors") == "2 modules (LoRA)"
    assert describe(tmp_path / "loha.safetensors") == "1 modules (LoHa)"
    with pytest.raises(AdapterFileError, match=r"^base\.safetensors: .*without LoRA"):
        describe(tmp_path / "base.safetensors")
    with pytest.raises(AdapterFileError, match=r"^junk\.safetensors: not a readable safetensors"):
        describe(tmp_path / "junk.safetensors")
    # the name the user uploaded is the one named, not the upload cache's
    with pytest.raises(AdapterFileError, match=r"^my notes\.txt: not a \.safetensors file"):
        describe(tmp_path / "notes.txt", "my notes.txt")


def test_import_never_overwrites_and_reuses_an_identical_file(tmp_path):
    dest = tmp_path / "adapters"
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(safetensors_bytes(LORA, {"modelspec.title": "one"}))
    two.write_bytes(safetensors_bytes(LORA, {"modelspec.title": "two"}))
    p1, info = import_upload(one, "Cool LoRA (v2).safetensors", dest)
    assert p1 == dest / "Cool-LoRA-v2.safetensors" and info == "2 modules (LoRA)"
    p2, _ = import_upload(two, "Cool LoRA (v2).safetensors", dest)
    assert p2 == dest / "Cool-LoRA-v2-2.safetensors" and p1.read_bytes() == one.read_bytes()
    assert import_upload(one, "Cool LoRA (v2).safetensors", dest)[0] == p1
    assert sorted(p.name for p in dest.iterdir()) == ["Cool-LoRA-v2-2.safetensors", "Cool-LoRA-v2.safetensors"]


def test_choices_list_adapters_only_and_picks_stay_inside_the_roots(tmp_path):
    uploads, models = tmp_path / "adapters", tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    uploads.mkdir()
    (uploads / "mine.safetensors").write_bytes(safetensors_bytes(LORA))
    (models / "loras" / "shelf.safetensors").write_bytes(safetensors_bytes(LORA))
    (models / "sd15.safetensors").write_bytes(safetensors_bytes(["model.diffusion_model.out.weight"]))
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(safetensors_bytes(LORA))
    choices = adapter_choices([uploads, models])
    assert [label for label, _ in choices] == ["mine.safetensors (adapters)", "loras/shelf.safetensors (models)"]
    assert resolve_choice([uploads, models], choices[1][1]) == models / "loras" / "shelf.safetensors"
    for bad in (str(outside), str(uploads / ".." / "outside.safetensors"), "/etc/passwd"):
        with pytest.raises(UnsafePath):
            resolve_choice([uploads, models], bad)


def test_grid_has_a_label_margin_and_one_cell_per_row_and_strength():
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    blocks = [GridBlock("prompt 1: a cat", [("step 2", [red, blue]), ("step 4 (final)", [blue, red])]),
              GridBlock("prompt 2: a dog", [("step 2", [red, red]), ("step 4 (final)", [blue, blue])])]
    grid = compose_grid(blocks, [strength_label(0), strength_label(1)])
    a = np.asarray(grid)
    assert strength_label(0.5) == "strength 0.5" and strength_label(1) == "strength 1.0"
    # cells are scaled to 128 px; each row is 128 px plus padding, four rows plus two headings plus the column labels
    assert grid.height > 4 * 128 and grid.width > 2 * 128
    reds = np.all(a == (255, 0, 0), axis=-1)
    blues = np.all(a == (0, 0, 255), axis=-1)
    assert reds.sum() == 4 * 128 * 128 and blues.sum() == 4 * 128 * 128
    # the labels are drawn: dark text pixels left of the first cell and above it
    first_x = int(np.argmax(reds.any(axis=0)))
    first_y = int(np.argmax((reds | blues).any(axis=1)))
    assert first_x > 20 and (a[:, :first_x].sum(axis=-1) < 200).any()
    assert (a[:first_y].sum(axis=-1) < 200).any()
    with pytest.raises(ValueError):
        compose_grid([], ["strength 1.0"])
