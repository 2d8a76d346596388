"""The best-checkpoint suggestion from a run folder's validation events and previews: the lowest
validation loss among checkpoints that keep prompts without the trigger near the base's pictures."""
import numpy as np
import pytest
from PIL import Image

from trainer.run.best import DRIFT_SHARE, SEED_TO_PROMPT_DISTANCE, has_trigger, suggest
from trainer.run.events import EventWriter

PROMPTS = ["a zkq pattern", "a green circle on a white background", "a red square on a black background"]


def _png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


class Run:
    def __init__(self, root):
        self.root, self.w = root, EventWriter(root)
        rng = np.random.default_rng(0)
        self.base = [rng.integers(0, 256, (16, 16, 3)).astype(np.float32) for _ in PROMPTS]
        for j, (p, img) in enumerate(zip(PROMPTS, self.base)):
            _png(root / "samples" / f"base_p{j}.png", img)
            self.w.emit("sample", step=0, path=f"samples/base_p{j}.png", prompt=p, seed=j, kind="base", index=j)

    def checkpoint(self, step, loss, shift, ema_loss=None, final=False):
        """A save at `step`: previews whose prompts without the trigger moved `shift` levels from the base."""
        for j, p in enumerate(PROMPTS):
            name = f"samples/step{step:06d}_p{j}.png"
            delta = shift if j else 90  # the trigger prompt changes a lot: that is the concept, not drift
            _png(self.root / name, np.where(self.base[j] + delta > 255, self.base[j] - delta, self.base[j] + delta))
            self.w.emit("sample", step=step, path=name, prompt=p, seed=j, kind="adapter", index=j)
        adapter = "output/lora.safetensors" if final else f"output/lora-step{step:06d}.safetensors"
        (self.root / adapter).parent.mkdir(exist_ok=True)
        (self.root / adapter).write_bytes(b"x")
        rec = {"adapter": adapter, "state": f"checkpoints/step-{step:08d}"}
        if ema_loss is not None:
            rec["ema_adapter"] = adapter.replace(".safetensors", "-ema.safetensors")
            (self.root / rec["ema_adapter"]).write_bytes(b"x")
            rec["ema_loss"] = ema_loss
        self.w.emit("checkpoint", step=step, state=rec["state"], adapter=adapter)
        self.w.emit("validation", step=step, loss=loss, images=4, timesteps=[100], per_timestep=[loss],
                    seconds=0.1, **rec)


def test_lowest_loss_within_the_drift_bound_is_suggested(tmp_path):
    run = Run(tmp_path)
    run.checkpoint(100, 0.30, 4)
    run.checkpoint(200, 0.20, 8)
    run.checkpoint(300, 0.25, 12, final=True)
    s = suggest(tmp_path, "zkq pattern")
    assert s.pick.step == 200 and not s.pick.ema and s.pick.adapter == "output/lora-step000200.safetensors"
    # the yardstick: base pictures of different prompts (uniform noise: ~85 apart), scaled to a new seed's
    assert 70 < s.drift_bound / DRIFT_SHARE / SEED_TO_PROMPT_DISTANCE < 100
    assert s.pick.drift == pytest.approx(8, abs=0.5)
    assert s.reason.startswith("step 200: lowest validation loss (0.2000, final 0.2500)"), s.reason
    assert "of 255" in s.reason


def test_a_checkpoint_that_moved_the_prior_too_far_is_passed_over(tmp_path):
    run = Run(tmp_path)
    run.checkpoint(100, 0.30, 4)
    run.checkpoint(200, 0.20, 70)  # lowest loss, but the base's own pictures changed (~70 of ~85; bound ~27)
    s = suggest(tmp_path, "zkq pattern")
    assert s.pick.step == 100
    assert "1 checkpoint(s) with a lower loss moved them too far" in s.reason
    # without trigger words the drift cannot be told apart from the concept: loss alone decides
    assert suggest(tmp_path, "").pick.step == 200


def test_the_ema_file_is_suggested_when_its_loss_is_lower(tmp_path):
    run = Run(tmp_path)
    run.checkpoint(100, 0.30, 4, ema_loss=0.31)
    run.checkpoint(200, 0.22, 5, ema_loss=0.18, final=True)
    s = suggest(tmp_path, "zkq pattern")
    assert s.pick.ema and s.pick.step == 200 and s.pick.adapter == "output/lora-ema.safetensors"
    assert s.reason.startswith("step 200 (EMA): lowest validation loss (0.1800, final 0.2200)"), s.reason
    assert len(s.candidates) == 4


def test_every_checkpoint_too_far_suggests_the_least_moved_and_says_so(tmp_path):
    run = Run(tmp_path)
    run.checkpoint(100, 0.30, 75)
    run.checkpoint(200, 0.20, 80)
    s = suggest(tmp_path, "zkq pattern")
    assert s.pick.step == 100 and "lower learning rate" in s.reason


def test_no_validation_no_suggestion_and_how_to_get_one(tmp_path):
    EventWriter(tmp_path).emit("checkpoint", step=10, state="checkpoints/step-00000010",
                               adapter="output/lora.safetensors")
    s = suggest(tmp_path, "zkq")
    assert s.pick is None and "Hold-out share" in s.reason


def test_a_deleted_checkpoint_file_is_not_suggested(tmp_path):
    run = Run(tmp_path)
    run.checkpoint(100, 0.30, 4)
    run.checkpoint(200, 0.20, 4)
    (tmp_path / "output" / "lora-step000200.safetensors").unlink()
    assert suggest(tmp_path, "zkq pattern").pick.step == 100


def test_trigger_phrases():
    assert has_trigger("a red ZKQ pattern on white", "zkq pattern")
    assert has_trigger("photo of sks dog", "zkq, sks dog")
    assert not has_trigger("a green circle", "zkq pattern")
