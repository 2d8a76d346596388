"""Start-up: the light CLI commands load no heavy library, and no command loads bitsandbytes unless it
quantises (it costs seconds and prints kernel notes on some CPUs). Each case runs in a fresh interpreter
and reports which of the heavy modules ended up in sys.modules."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO, make_dataset

HEAVY = ("torch", "diffusers", "bitsandbytes", "transformers", "peft")


def _loaded_after(argv: list[str]) -> tuple[dict, str]:
    code = ("import json, sys\nfrom trainer.cli import main\nrc = main(%r)\n"
            "print(json.dumps({'rc': rc, 'loaded': [m for m in %r if sys.modules.get(m) is not None]}))"
            % (argv, HEAVY))
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_help_does_not_import_torch():
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "trainer", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "trainer.cli" in imported  # the check sees the imports
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_options_and_doctor_import_no_heavy_library(tmp_path):
    out, _ = _loaded_after(["options"])
    assert out == {"rc": 0, "loaded": []}
    data = make_dataset(tmp_path / "data", n=2)
    out, _ = _loaded_after(["doctor", str(data)])
    assert out == {"rc": 0, "loaded": []}


def test_check_loads_torch_alone(tmp_path):
    bogus = tmp_path / "not-an-adapter.safetensors"
    bogus.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    out, err = _loaded_after(["check", str(bogus)])
    # check reads tensors: it may load torch, but not the model libraries (peft came in through a
    # constant of trainer.adapter.network) nor the 4-bit one
    assert out["loaded"] == ["torch"]
    assert "gemm_4bit" not in err and "torchvision" not in err


def test_train_announces_itself_before_the_heavy_imports(tmp_path):
    """`train` writes its first event ("loading model") before it imports the training code: with that
    code made unimportable, the event is there and torch was never loaded."""
    from tests.helpers import events, write_config

    cfg = write_config(tmp_path / "run", **{"dataset.path": str(make_dataset(tmp_path / "data", n=2))})
    code = ("import json, sys\nsys.modules['trainer.train.loop'] = None  # importing it now fails\n"
            "from trainer.cli import main\ntry:\n    main(['train', %r, '--quiet'])\nexcept ImportError:\n    pass\n"
            "print(json.dumps([m for m in %r if sys.modules.get(m) is not None]))" % (str(cfg), HEAVY))
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
    ev = events(tmp_path / "run")
    assert [(e["type"], e.get("phase")) for e in ev] == [("phase", "loading model")]
