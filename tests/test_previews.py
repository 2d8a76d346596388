"""Preview rounds through the real Trainer (tiny SD1, real diffusers pipeline): step 0 draws each prompt
once per kind (the adapter equals the base there, B = 0, so it is not drawn twice), every round is one
batched pipeline call per kind (counted by a hook on the real VAE decoder, which each pipeline call runs
once for its whole batch), and a failing preview costs a warning, never the adapter."""
from __future__ import annotations

from collections import Counter

from tests.helpers import events, make_dataset, write_config
from trainer.config import load_config
from trainer.train.loop import EXIT_OK, Trainer

PROMPTS = ["a sks cat", "a sks dog"]


class DecodeCountingTrainer(Trainer):
    """The real Trainer; once the model is loaded, a forward pre-hook records the batch size of every
    VAE-decoder call (the training step never decodes: only preview pipelines do)."""

    def _prepare_caches(self) -> None:
        self.decodes: list[int] = []
        self.base.vae.decoder.register_forward_pre_hook(lambda m, args: self.decodes.append(args[0].shape[0]))
        super()._prepare_caches()


def _run(tmp_path, **sets) -> tuple[DecodeCountingTrainer, int]:
    data = make_dataset(tmp_path / "data", n=4)
    cfg = load_config(write_config(tmp_path / "run", **{
        "dataset.path": str(data), "schedule.max_train_steps": 2, "sampling.every_n_steps": 1,
        "sampling.at_start": "true", "sampling.steps": 2, "sampling.size": 32, "sampling.prompts": PROMPTS,
        **sets}))
    t = DecodeCountingTrainer(cfg, tmp_path / "run", quiet=True)
    return t, t.run()


def test_step0_draws_each_prompt_once_and_each_round_is_one_batched_call(tmp_path):
    t, code = _run(tmp_path, **{"sampling.with_base": "true"})
    assert code == EXIT_OK
    samples = [e for e in events(tmp_path / "run") if e["type"] == "sample"]
    per_round = Counter((e["step"], e["kind"]) for e in samples)
    # step 0: the base images only (the adapter would draw them again); step 1 (scheduled) and step 2
    # (final): the adapter; the base images are not drawn again
    assert per_round == {(0, "base"): 2, (1, "adapter"): 2, (2, "adapter"): 2}, per_round
    for (step, kind), n in per_round.items():
        prompts = sorted(e["prompt"] for e in samples if (e["step"], e["kind"]) == (step, kind))
        assert prompts == sorted(PROMPTS), (step, kind)
    # one pipeline call per round and kind, each decoding every prompt of the round at once
    assert t.decodes == [len(PROMPTS)] * 3, t.decodes
    for e in samples:
        assert (tmp_path / "run" / e["path"]).is_file()


def test_without_base_images_step0_draws_the_adapter_once(tmp_path):
    t, code = _run(tmp_path, **{"sampling.with_base": "false"})
    assert code == EXIT_OK
    per_round = Counter((e["step"], e["kind"]) for e in events(tmp_path / "run") if e["type"] == "sample")
    assert per_round == {(0, "adapter"): 2, (1, "adapter"): 2, (2, "adapter"): 2}, per_round
    assert t.decodes == [len(PROMPTS)] * 3, t.decodes


def test_a_failing_final_preview_is_a_warning_and_the_adapter_is_saved(tmp_path, monkeypatch):
    """Before, the final previews ran before the final save: a crash there ended the run "failed" with
    no adapter. The fault point raises inside the preview round, just before its pipeline call."""
    monkeypatch.setenv("ATELIER_FAULT", "preview-error@2")
    t, code = _run(tmp_path, **{"sampling.with_base": "false"})
    assert code == EXIT_OK
    ev = events(tmp_path / "run")
    assert (tmp_path / "run" / "output" / "tiny-test.safetensors").is_file()
    assert ev[-1]["type"] == "finished" and ev[-1]["status"] == "finished"
    assert ev[-1]["adapter"] == "output/tiny-test.safetensors"
    warnings = [e for e in ev if e["type"] == "warning" and "preview" in e["message"]]
    assert len(warnings) == 1 and warnings[0]["step"] == 2, warnings
    assert not [e for e in ev if e["type"] == "error"]
    # the state was written before the preview failed, and the earlier rounds were drawn
    assert any(e["type"] == "checkpoint" and e["step"] == 2 for e in ev)
    assert {e["step"] for e in ev if e["type"] == "sample"} == {0, 1}


def test_a_round_reports_its_denoising_steps_and_the_page_says_so(tmp_path):
    from trainer.models.tiny import build_tiny
    from trainer.run.events import run_view
    from trainer.train.sampling import SampleSpec, generate_batch
    from ui.live import phase_text

    seen: list[int] = []
    specs = [SampleSpec(prompt=p, seed=i, steps=3, width=32, height=32) for i, p in enumerate(PROMPTS)]
    images = generate_batch(build_tiny("sd1"), specs, seen.append)
    assert seen == [1, 2, 3] and len(images) == len(PROMPTS)  # one call, told after each step

    t, code = _run(tmp_path, **{"sampling.with_base": "true"})
    assert code == EXIT_OK
    phases = [e for e in events(tmp_path / "run") if e["type"] == "phase" and e["phase"] == "preview"]
    # every round starts at 0 of (kinds × sampling steps) and says how many images it draws
    starts = [e for e in phases if e["done"] == 0]
    assert [e["total"] for e in starts] == [2, 2, 2] and all(e["images"] == len(PROMPTS) for e in phases)
    assert all(0 <= e["done"] < e["total"] for e in phases)
    view = run_view(tmp_path / "run")
    view.phase, view.state = phases[0], "running"
    assert phase_text(view, "running") == "drawing 2 preview(s) · denoising step 0/2"


def test_the_previews_still_due_are_timed_at_the_pace_of_those_drawn(tmp_path):
    from trainer.train.previews import Previews

    cfg = load_config(write_config(tmp_path / "run", **{"sampling.prompts": PROMPTS, "sampling.every_n_steps": 4,
                                                         "schedule.max_train_steps": 10}))
    pv = Previews(cfg, None, tmp_path / "samples", None, "cpu", None, warn=print)
    assert pv.seconds_left(3, 10) == 0  # nothing drawn yet: no pace to go by
    pv.draw_seconds += [1.5, 2.5]
    assert pv.seconds_left(3, 10) == 6.0  # steps 4, 8 and the end, 2 s each
    assert pv.seconds_left(10, 10) == 0
