"""Tiny captioner models built from scratch for the tests: a WD14-layout ONNX tagger whose scores follow the
image's colours (so a test knows which tags an image gets), and a random-weight BLIP with a tiny vocabulary."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

# (name, category, weight on mean blue, on mean green, on mean red (0-1), bias): score = sigmoid(w·x + b)
TAGS = [
    ("general", 9, 0, 0, 0, 0.0),         # 0.50
    ("explicit", 9, 0, 0, 0, -2.0),       # 0.12
    ("long_hair", 0, 0, 0, 8, -4.0),      # red images 0.98, others 0.02
    ("^_^", 0, 0, 0, 0, 2.0),             # 0.88
    ("blue_sky", 0, 8, 0, 0, -4.0),       # blue images 0.98
    ("hatsune_miku", 4, 0, 0, 0, 1.0),    # 0.73: under the default character threshold 0.85
    ("watermark", 0, 0, 0, 0, 3.0),       # 0.95
    ("solo", 0, 0, 0, 0, -0.5),           # 0.38: just over the default general threshold 0.35
]
SIDE = 16


def make_tagger(folder: Path) -> Path:
    """model.onnx (input [batch, 16, 16, 3] BGR 0-255 → mean per channel → linear → sigmoid), selected_tags.csv."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    w = np.array([[t[2], t[3], t[4]] for t in TAGS], dtype=np.float32).T / 255.0  # (3, tags)
    b = np.array([t[5] for t in TAGS], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input_1", "axes"], ["mean"], keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["logits0"]),
         helper.make_node("Add", ["logits0", "b"], ["logits"]),
         helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"])],
        "tiny_tagger",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["batch", SIDE, SIDE, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", len(TAGS)])],
        [numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"), numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # what onnxruntime releases of the last years all read
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f)
        wr.writerow(["tag_id", "name", "category", "count"])
        for i, t in enumerate(TAGS):
            wr.writerow([i, t[0], t[1], 100])
    return folder


def make_blip(folder: Path) -> Path:
    """A random-weight BLIP captioner (BlipForConditionalGeneration + BlipProcessor) with a 16-word vocabulary,
    saved as a model folder (save_pretrained), as a downloaded one is."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "photo", "of", "red", "blue", "square",
             "on", "the", "table", "cat"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tok = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    cfg = BlipConfig(vision_config=dict(**small, image_size=32, patch_size=8),
                     text_config=dict(**small, vocab_size=len(words), encoder_hidden_size=16,
                                      max_position_embeddings=64, bos_token_id=5, pad_token_id=0, sep_token_id=3,
                                      eos_token_id=3), projection_dim=16)
    torch.manual_seed(0)
    BlipForConditionalGeneration(cfg).eval().save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder
