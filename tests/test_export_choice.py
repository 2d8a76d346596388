"""Export's checkpoint choice on a real tiny run with validation, EMA and previews: the suggested checkpoint
by default, the user's pick once made, the edited copy only while it was made from the chosen file, and a
Civitai bundle that describes the chosen checkpoint (its step, its previews)."""
import json
import zipfile

import pytest

from tests.helpers import make_dataset, run_in_process, write_config
from trainer.formats.safetensors_io import read_header
from ui.export_bundle import (adapter_path, build_bundle, checkpoint_adapters, chosen_source, read_choice,
                              suggestion, write_choice)

SETTINGS = {"schedule.max_train_steps": 6, "saving.every_n_steps": 2, "sampling.every_n_steps": 2,
            "sampling.steps": 2, "validation.split": 0.5, "optimizer.ema": "true", "optimizer.ema_decay": 0.5,
            "saving.trigger_phrase": "sks shape"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("choice")
    data = make_dataset(root / "data", n=4)
    cfg = write_config(root / "run", **{"dataset.path": str(data), **SETTINGS,
                                        "sampling.prompts": ["a sks shape", "a photo of a dog"]})
    r = run_in_process("train", str(cfg), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    return root / "run"


def rel(run, p):
    return str(p.relative_to(run))


def test_every_saved_file_with_its_ema_is_offered(run):
    saved = checkpoint_adapters(run)
    assert [(a.step, a.ema) for a in saved] == [(s, e) for s in (2, 4, 6) for e in (False, True)]
    assert [a.label for a in saved][-2:] == ["step 6 (final)", "step 6 EMA (final)"]
    assert all(a.path.is_file() for a in saved)
    assert [a.step for a in checkpoint_adapters(run, ema=False)] == [2, 4, 6]


def test_the_suggestion_is_the_default_and_a_pick_replaces_it(run):
    s = suggestion(run)
    assert s.pick is not None and s.reason.startswith(s.pick.label)
    assert len(s.candidates) == 6  # three saves, raw and EMA, each with a validation loss
    assert all(c.drift is not None for c in s.candidates)  # "a photo of a dog" has no trigger: drift measured
    assert not read_choice(run)
    assert rel(run, adapter_path(run)) == s.pick.adapter

    other = next(a for a in checkpoint_adapters(run) if rel(run, a.path) != s.pick.adapter)
    write_choice(run, adapter=rel(run, other.path))
    assert adapter_path(run) == other.path == chosen_source(run)

    with zipfile.ZipFile(build_bundle(run)) as z:
        card = z.read("README.md").decode()
        steps = {int(n.rsplit("step", 1)[1].removesuffix(".png")) for n in z.namelist() if n.startswith("previews/")}
        inner = [n for n in z.namelist() if n.endswith(".safetensors")]
    assert f"| Steps | {other.step} |" in card
    assert steps and max(steps) <= other.step  # no preview from after the chosen checkpoint
    assert inner == [f"{other.path.stem}.safetensors"]


def test_an_edited_copy_follows_only_the_checkpoint_it_was_made_from(run):
    saved = checkpoint_adapters(run)
    first, last = saved[0], saved[-1]
    write_choice(run, adapter=rel(run, first.path))
    edited = run / "export" / "tiny-test.safetensors"
    r = run_in_process("meta", str(first.path), f"--out={edited}", "--set=title=Edited step 2")
    assert r.returncode == 0, r.stderr[-2000:]
    write_choice(run, edited_from=rel(run, first.path))
    assert adapter_path(run) == edited
    assert read_header(adapter_path(run)).metadata["modelspec.title"] == "Edited step 2"
    # another checkpoint picked: its own file, not the copy edited from the first
    write_choice(run, adapter=rel(run, last.path))
    assert adapter_path(run) == last.path
    write_choice(run, adapter=rel(run, first.path))
    assert adapter_path(run) == edited
    assert json.loads((run / "export" / "choice.json").read_text()) == {
        "adapter": rel(run, first.path), "edited_from": rel(run, first.path)}


def test_a_pick_outside_the_run_falls_back_to_the_suggestion(run):
    write_choice(run, adapter="../../etc/passwd")
    assert rel(run, chosen_source(run)) == suggestion(run).pick.adapter
