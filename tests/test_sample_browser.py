"""The sample browser's grid: rows = steps with the base first, columns = prompts, each cell the newest
image the trainer reported for it with the parameters written into the PNG."""
from PIL import Image

from trainer.run.events import EventWriter
from trainer.train.sampling import save_png
from ui.sample_browser import BASE_ROW, grid_html, sample_grid


def _sample(run, writer, name, step, kind, j, prompt, colour):
    save_png(Image.new("RGB", (8, 8), colour), run / "samples" / name, f"{prompt}\nSteps: 4, Seed: {j}")
    writer.emit("sample", step=step, path=f"samples/{name}", prompt=prompt, seed=j, kind=kind, index=j)


def test_rows_are_steps_with_the_base_first_and_columns_are_prompts(tmp_path):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    w = EventWriter(run)
    prompts = ["a zkq cat", "a dog"]
    for j, p in enumerate(prompts):
        _sample(run, w, f"base_p{j}.png", 0, "base", j, p, (0, 0, 0))
    for step in (20, 10):  # reported out of order: rows are sorted by step
        for j, p in enumerate(prompts):
            _sample(run, w, f"step{step:06d}_p{j}.png", step, "adapter", j, p, (step, 0, 0))
    # a resumed process drew step 10's first prompt again: the newer event wins
    _sample(run, w, "step000010_p0.png", 10, "adapter", 0, "a zkq cat", (99, 0, 0))
    # a preview whose file is gone (deleted by hand) is left out, not shown broken
    w.emit("sample", step=30, path="samples/step000030_p0.png", prompt="a zkq cat", seed=0, kind="adapter", index=0)

    grid = sample_grid(run)
    assert grid.prompts == prompts
    assert [s for s, _ in grid.rows] == [BASE_ROW, 10, 20]
    assert grid.count == 6
    assert [c.kind for c in grid.rows[0][1]] == ["base", "base"]
    assert grid.rows[1][1][1].path == run / "samples" / "step000010_p1.png"
    assert grid.rows[2][1][0].parameters() == "a zkq cat\nSteps: 4, Seed: 0"

    page = grid_html(run)
    assert page.count('class="sample-cell"') == 6
    assert page.index(">base<") < page.index(">step 10<") < page.index(">step 20<")
    assert "prompt 2: a dog" in page and "Steps: 4, Seed: 1" in page


def test_a_run_without_previews_says_so(tmp_path):
    EventWriter(tmp_path / "run").emit("phase", phase="loading model", done=0, total=0)
    assert "no previews yet" in grid_html(tmp_path / "run")
    assert "no previews yet" in grid_html(None)


def test_prompt_and_parameters_are_escaped(tmp_path):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    _sample(run, EventWriter(run), "step000001_p0.png", 1, "adapter", 0, '<img src=x onerror="alert(1)">', (1, 2, 3))
    page = grid_html(run)
    assert "<img src=x" not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
