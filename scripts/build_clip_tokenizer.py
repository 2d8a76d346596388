"""Rebuild trainer/assets/clip_tokenizer from CLIP's BPE file.

The CLIP BPE vocabulary (MIT licence) ships in open-clip-torch's wheel as
open_clip/bpe_simple_vocab_16e6.txt.gz. Single-file checkpoints carry no tokenizer, so the project
ships the HF-format files this script writes; run it only to reproduce them:

    pip download --no-deps open-clip-torch && unzip -p open_clip_torch-*.whl \
        open_clip/bpe_simple_vocab_16e6.txt.gz > bpe.txt.gz
    python scripts/build_clip_tokenizer.py bpe.txt.gz trainer/assets/clip_tokenizer
"""
import gzip
import json
import sys
from pathlib import Path


def bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level map: printable bytes map to themselves, the rest to code points >= 256.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build(bpe_gz: Path, out: Path) -> None:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    cfg = dict(special, model_max_length=77, do_lower_case=True, tokenizer_class="CLIPTokenizer")
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    print(f"{len(vocab)} tokens, {len(merges)} merges -> {out}")


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]))
