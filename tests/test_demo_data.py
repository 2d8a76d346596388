"""The demo's generated data and its hand-made scorers, checked against ground truth."""
import numpy as np
from PIL import Image

from tests.helpers import REPO
from trainer.demo import score, shapes


def _arr(im):
    return np.asarray(im, dtype=np.int16)


def test_generator_is_reproducible_from_seed():
    a, b = shapes.base_examples(40, seed=3), shapes.base_examples(40, seed=3)
    assert [c for _, c in a] == [c for _, c in b]
    assert all(np.array_equal(_arr(x), _arr(y)) for (x, _), (y, _) in zip(a, b))
    c = shapes.base_examples(40, seed=4)
    assert any(not np.array_equal(_arr(x), _arr(y)) for (x, _), (y, _) in zip(a, c))
    assert all(im.size == (64, 64) and im.mode == "RGB" for im, _ in a)


def test_shape_reader_recovers_what_was_drawn():
    rng = np.random.default_rng(21)
    specs = [shapes.random_shape_spec(rng) for _ in range(120)]
    acc = score.attribute_accuracy([shapes.render_shape(s) for s in specs],
                                   [(s.shape, s.colour, s.background) for s in specs])
    assert acc == {"colour": 1.0, "shape": 1.0, "background": 1.0}


def test_shape_reader_finds_nothing_on_an_empty_canvas():
    r = score.read_shape(Image.new("RGB", (64, 64), (255, 255, 255)))
    assert r.background == "white" and r.colour is None and r.shape is None


def test_stripe_score_separates_the_concept_from_everything_the_base_knows():
    concept = [im for im, _ in shapes.concept_examples(20, seed=5)]
    assert score.concept_score(concept) == 1.0
    rng = np.random.default_rng(8)
    known = [shapes.render_shape(shapes.random_shape_spec(rng)) for _ in range(60)]
    known += [shapes.random_texture(rng, shapes.BASE_TEXTURES + shapes.VAE_ONLY_TEXTURES)[0] for _ in range(40)]
    assert score.concept_score(known) == 0.0
    # the other diagonal is not the concept either
    flipped = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in concept]
    assert score.concept_score(flipped) == 0.0


def test_mean_abs_difference():
    white, black = Image.new("RGB", (8, 8), "white"), Image.new("RGB", (8, 8), "black")
    assert score.mean_abs_difference([white, black], [white, white]) == 127.5
    try:
        score.mean_abs_difference([white], [])
    except ValueError:
        pass
    else:
        raise AssertionError("unequal lists must be refused")


def test_committed_demo_datasets_are_what_the_generator_writes(tmp_path):
    written = shapes.write_demo_datasets(tmp_path)
    for name, paths in written.items():
        committed = REPO / "datasets" / name
        assert sorted(p.name for p in committed.iterdir()) == sorted(
            n for p in paths for n in (p.name, p.with_suffix(".txt").name))
        for p in paths:
            c = committed / p.name
            assert np.array_equal(_arr(Image.open(c)), _arr(Image.open(p))), c
            assert c.with_suffix(".txt").read_text() == p.with_suffix(".txt").read_text()
    captions = [(REPO / "datasets" / shapes.CONCEPT_DATASET / f"zkq_{i:03d}.txt").read_text() for i in range(20)]
    assert all(shapes.TRIGGER in c for c in captions)
    assert not (REPO / "datasets" / "__init__.py").exists()
