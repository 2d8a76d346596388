"""The bundled demo preset names its regularisation folder repository-relative ("datasets/shapes-reg"); the
studio must find it among the project's bundled datasets, and still refuse anything outside its folders."""
import pytest

from tests.helpers import REPO
from trainer.config import load_preset
from ui.workspace import Studio
from ui.tab_train import BUNDLED_DATASETS, ConfigError, check_extra_paths


def test_demo_preset_regularisation_folder_resolves_to_the_bundled_dataset(tmp_path):
    studio = Studio.create(tmp_path / "data")
    cfg = load_preset("demo")
    check_extra_paths(studio, cfg)
    assert cfg.dataset.reg_path == str((REPO / "datasets" / "shapes-reg").resolve())


def test_a_same_named_folder_in_the_studio_wins_and_escapes_are_refused(tmp_path):
    studio = Studio.create(tmp_path / "data")
    own = studio.dirs.datasets / "datasets" / "shapes-reg"
    own.mkdir(parents=True)
    cfg = load_preset("demo")
    check_extra_paths(studio, cfg)
    assert cfg.dataset.reg_path == str(own.resolve())
    for bad in ("datasets/../../trainer", "../../etc", str(REPO / "trainer"), str(BUNDLED_DATASETS / ".." / "ui")):
        cfg = load_preset("demo")
        cfg.dataset.reg_path = bad
        with pytest.raises(ConfigError, match="must be inside"):
            check_extra_paths(studio, cfg)
