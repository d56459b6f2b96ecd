from pathlib import Path

import pytest
import yaml

from dcs_cli.config import Config, describe, dump_yaml, load_config, parse_override, save_resolved
from dcs_cli.errors import ConfigError


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = load_config()
    assert isinstance(cfg, Config)
    path = save_resolved(cfg, tmp_path)
    again = load_config(path)
    assert dump_yaml(again) == dump_yaml(cfg)


def test_file_then_overrides_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"selection": {"mode": "hf", "sample_num": 300}, "optim": {"lr": 0.5}}))
    cfg = load_config(path, ["selection.sample_num=500", "optim.lr_steps=[3, 4]", "optim.lr=1"])
    assert cfg.selection.mode == "hf"  # from the file
    assert cfg.selection.sample_num == 500  # override wins
    assert cfg.optim.lr_steps == [3, 4]
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # ints widen to float
    assert cfg.selection.ntrees == 10  # untouched default


def test_base_dict_is_lowest_priority(tmp_path):
    cfg = load_config(None, ["model.feature_dim=64"], base={"model": {"feature_dim": 32, "backbone": "mlp"}})
    assert cfg.model.feature_dim == 64 and cfg.model.backbone == "mlp"


@pytest.mark.parametrize(
    "override, message",
    [
        ("selection.sample_nun=3", "unknown config key 'selection.sample_nun'; valid keys in selection: mode"),
        ("selecton.mode=hf", "unknown config key 'selecton'; valid keys: data, model"),
        ("selection.sample_num=abc", "selection.sample_num = 'abc' has the wrong type; expected int"),
        ("selection.sample_num=1.5", "expected int"),
        ("selection.adaptive=3", "selection.adaptive = 3 has the wrong type; expected bool"),
        ("selection.mode=fast", "choose one of: full, hf, hnsw, random, exact"),
        ("optim.lr_steps=[1, x]", "optim.lr_steps[1]"),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("optim.warmup_epochs=.inf", "optim.warmup_epochs = inf must be a finite number"),
        ("optim.weight_decay=.nan", "optim.weight_decay = nan must be a finite number"),
        ("output.dir=''", "output.dir must name the run folder"),
        ("selection.sample_num=0", "selection.sample_num must be > 0"),
        ("data=3", "data must be a mapping"),
        ("nokey", "expected KEY=VALUE"),
        ("a..b=1", "dotted names"),
    ],
)
def test_bad_values_name_the_dotted_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy)


def test_override_values_are_yaml():
    assert load_config(None, ["optim.lr=1e-3"]).optim.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string
    assert parse_override("head.bias=true") == (["head", "bias"], True)
    assert parse_override("output.dir=runs/x") == (["output", "dir"], "runs/x")


def test_every_field_is_documented():
    rows = describe()
    assert rows
    undocumented = [key for key, _, _, help_text in rows if not help_text]
    assert undocumented == []


def test_shipped_configs_load():
    configs = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(configs.glob("*.yaml")):
        load_config(path)


def test_a_checkpoint_config_with_a_retired_key_still_loads():
    """A run saved while `selection.fill_correction` existed resumes; a new config naming it is an error."""
    cfg = load_config(None, [], base={"selection": {"mode": "hf", "fill_correction": False}})
    assert cfg.selection.mode == "hf"
    with pytest.raises(ConfigError, match="selection.fill_correction"):
        load_config(None, ["selection.fill_correction=true"])


@pytest.mark.parametrize("override, expected", [
    ("data.train_list=0123", "0123"),
    ("data.train_list=1.10", "1.10"),
    ("data.train_list=yes", "yes"),
    ("output.dir=2024-01-01", "2024-01-01"),
    ("dist.master_addr=0x10", "0x10"),
    ("output.dir='runs/quoted'", "runs/quoted"),  # a YAML-quoted value is unquoted, as before
])
def test_set_gives_a_text_field_the_text_as_typed(override, expected):
    key, _ = override.split("=", 1)
    section, name = key.split(".")
    assert getattr(getattr(load_config(None, [override]), section), name) == expected


@pytest.mark.parametrize("value, kind", [("0123", "a number"), ("yes", "a boolean"), ("2024-01-01", "a date")])
def test_a_yaml_scalar_that_is_not_text_for_a_text_field_is_refused(tmp_path, value, kind):
    path = tmp_path / "c.yaml"
    path.write_text(f"data:\n  train_list: {value}\n")
    with pytest.raises(ConfigError, match=f"data.train_list = .*: YAML reads this value as {kind}, not text; "
                       "quote it") as info:
        load_config(path)
    assert "\n" not in str(info.value)
    path.write_text(f"data:\n  train_list: '{value}'\n")
    assert load_config(path).data.train_list == value


@pytest.mark.parametrize("text, line, key", [
    ("selection:\n  mode: hf\n  sample_num: 3\n  sample_num: 4\n", 4, "sample_num"),
    ("optim:\n  lr: 0.1\nselection:\n  mode: hf\noptim:\n  momentum: 0.5\n", 5, "optim"),
])
def test_a_key_given_twice_in_a_yaml_file_is_refused(tmp_path, text, line, key):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"line {line}: key '{key}' appears twice") as info:
        load_config(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_yaml_merge_key_may_be_overridden(tmp_path):
    from dcs_cli.config import read_yaml

    path = tmp_path / "c.yaml"
    path.write_text("a: &a {x: 1, y: 2}\nb:\n  <<: *a\n  x: 3\n")
    assert read_yaml(path)["b"] == {"x": 3, "y": 2}


def test_a_config_file_never_runs_code(tmp_path):
    from dcs_cli.config import read_yaml

    path = tmp_path / "c.yaml"
    path.write_text("optim: !!python/object/apply:os.system ['echo ran']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(path)
