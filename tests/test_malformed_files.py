"""Hostile adapter and base files: refused with the file's name and the reason, never executed."""
import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import run_in_process
from trainer.formats.safetensors_io import SafetensorsError, read_header


def _raw(header: dict, data: bytes = b"", declared_len: int | None = None) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h) if declared_len is None else declared_len) + h + data


def _cases(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.ones(4, 4), "b": torch.zeros(2)}, str(good), metadata={"k": "v"})
    blob = good.read_bytes()
    t = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    cases = {
        "truncated.safetensors": (blob[: len(blob) - 20], "truncated"),
        "no_header.safetensors": (b"\x01\x02", "truncated"),
        "empty.safetensors": (b"", "truncated"),
        "oversized_header.safetensors": (struct.pack("<Q", 2**40) + b"{}", "header length"),
        "header_past_end.safetensors": (_raw({"a": t}, b"\0" * 8, declared_len=5000), "header length"),
        "not_json.safetensors": (struct.pack("<Q", 9) + b"{not json", "not valid JSON"),
        "overlap.safetensors": (_raw({"a": t, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                                     b"\0" * 12), "overlap"),
        "offset_past_end.safetensors": (_raw({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                                             b"\0" * 8), "offsets"),
        "shape_mismatch.safetensors": (_raw({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
                                            b"\0" * 8), "offsets"),
        "duplicate_keys.safetensors": (struct.pack("<Q", 0) + b"", None),  # replaced below
        "non_string_meta.safetensors": (_raw({"__metadata__": {"n": 5}, "a": t}, b"\0" * 8), "strings"),
        "bad_dtype.safetensors": (_raw({"a": {"dtype": "X99", "shape": [2], "data_offsets": [0, 8]}},
                                       b"\0" * 8), "dtype"),
        "array_header.safetensors": (struct.pack("<Q", 2) + b"[]", "JSON object"),
    }
    dup = ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
           '"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}').encode()
    cases["duplicate_keys.safetensors"] = (struct.pack("<Q", len(dup)) + dup + b"\0" * 8, "duplicate")
    return cases


def test_malformed_safetensors_are_refused_by_name_and_reason(tmp_path):
    cases = _cases(tmp_path)
    for name, (data, reason) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(SafetensorsError) as e:
            read_header(p)
        assert name in str(e.value) and reason in str(e.value), (name, str(e.value))
    print(f"malformed safetensors files tried: {len(cases)}")


def test_trainer_check_and_generate_refuse_malformed_adapters(tmp_path):
    cases = _cases(tmp_path)
    for name in ("truncated.safetensors", "overlap.safetensors", "duplicate_keys.safetensors"):
        p = tmp_path / name
        p.write_bytes(cases[name][0])
        r = run_in_process("check", str(p))
        assert r.returncode != 0 and name in (r.stdout + r.stderr), (name, r.stdout, r.stderr)


def test_malformed_base_checkpoint_fails_the_run_cleanly(tmp_path):
    from tests.helpers import events, make_dataset, write_config

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(_cases(tmp_path)["overlap.safetensors"][0])
    data = make_dataset(tmp_path / "data", n=2)
    cfg = write_config(tmp_path / "run", **{"dataset.path": str(data), "model.base": str(bad)})
    r = run_in_process("train", str(cfg), "--quiet")
    assert r.returncode == 1
    err = next(e for e in events(tmp_path / "run") if e["type"] == "error")
    assert "model.safetensors" in err["message"]


def test_pickle_base_is_never_executed(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    for suffix in (".ckpt", ".pt"):
        p = tmp_path / f"model{suffix}"
        p.write_bytes(pickle.dumps({"state_dict": Evil()}))
        from trainer.models.loading import ModelLoadError, load_base

        with pytest.raises(ModelLoadError) as e:
            load_base(str(p))
        assert p.name in str(e.value)
    assert not marker.exists()
