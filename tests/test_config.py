import subprocess
import sys

import pytest

from trainer.config import (GROUPS, ConfigError, TrainConfig, apply_overrides, field_meta, from_dict, iter_fields,
                            load_config, load_preset, preset_names, save_config)


def test_every_field_has_label_help_and_group():
    n = 0
    for section, key, finfo, _ in iter_fields():
        meta = field_meta(finfo)
        assert meta["label"], f"{section}.{key} has no label"
        assert meta["help"], f"{section}.{key} has no help"
        assert section in GROUPS
        n += 1
    assert n > 60


def test_unknown_key_is_an_error_naming_it(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[network]\nrnak = 8\n')
    with pytest.raises(ConfigError, match=r"network\.rnak: unknown option"):
        load_config(p)


def test_out_of_range_value_names_the_field(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[network]\nrank = 0\n[optimizer]\nlr = -1\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "network.rank" in str(e.value) and "optimizer.lr" in str(e.value)


def test_bad_choice_and_bad_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[optimizer]\nname = "sgdd"\n')
    with pytest.raises(ConfigError, match="optimizer.name"):
        load_config(p)
    p.write_text('[optimizer\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


def test_toml_round_trip_and_overrides(tmp_path):
    cfg = from_dict(apply_overrides({}, ["network.rank=8", "dataset.flip=true", "sampling.prompts=a|b"]))
    assert cfg.network.rank == 8 and cfg.dataset.flip is True and cfg.sampling.prompts == ["a", "b"]
    save_config(cfg, tmp_path / "c.toml")
    assert load_config(tmp_path / "c.toml") == cfg
    with pytest.raises(ConfigError, match="network.nope"):
        apply_overrides({}, ["network.nope=1"])


def test_output_name_cannot_be_a_path():
    with pytest.raises(ConfigError, match="output_name"):
        from_dict({"saving": {"output_name": "../../etc/passwd"}})


def test_presets_are_valid_partial_configs():
    names = preset_names()
    assert "tiny-test" in names
    for name in names:
        cfg = load_preset(name)
        assert isinstance(cfg, TrainConfig)


def test_cli_lists_options():
    out = subprocess.run([sys.executable, "-m", "trainer", "options"], capture_output=True, text=True, check=True)
    assert "network.rank = 16 [1..1024]" in out.stdout
