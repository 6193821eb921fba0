from __future__ import annotations

from pathlib import Path

import pytest

from dlsec.audit.config import AuditConfig, ConfigError, Gate, load_config


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "audit.toml"
    p.write_text(text)
    return p


def test_defaults() -> None:
    cfg = load_config()
    assert cfg.dataset is None and cfg.dataset_spec == "digits"
    assert cfg.model == "simplenet" and cfg.model_dir is None and cfg.trust_code is False
    assert cfg.run_dir == Path("runs/digits-simplenet")


def test_toml_keys_match_flags_and_flags_win(tmp_path: Path) -> None:
    p = _toml(
        tmp_path,
        'dataset = "digits"\nmodel = "smallcnn"\nmodel-dir = "m"\nout = "o"\n'
        'fail-under = ["accuracy.clean_accuracy=0.9"]\nseed = 3\nepochs = 5\nlr = 1\n',
    )
    cfg = load_config(p, {"model": "simplenet", "fail-under": ["dataset.n_test=1"], "seed": None})
    assert cfg.model == "simplenet" and cfg.model_dir == "m" and cfg.out == "o" and cfg.seed == 3
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert [g.key for g in cfg.gates] == ["accuracy.clean_accuracy", "dataset.n_test"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('datset = "digits"\n', "datset: unknown setting"),
        ('epochs = "ten"\n', "epochs: expected int"),
        ("epochs = 0\n", "epochs: must be >= 1"),
        ("seed = true\n", "seed: expected int"),
        ('optimizer = "rmsprop"\n', "optimizer: must be adam or sgd"),
        ('fail-under = ["accuracy"]\n', "fail-under: expected KEY=VALUE"),
        ('fail-under = ["a=b"]\n', "fail-under: a: 'b' is not a number"),
        ('sections = ["nope"]\n', "sections: unknown section 'nope'"),
        ("[nosuchsection]\nx = 1\n", "[nosuchsection]: unknown section"),
        ("[accuracy]\nx = 1\n", "[accuracy]: this section takes no options"),
        ("this is = not toml", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_toml(tmp_path, text))
    assert message in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml")


def test_gate_parse() -> None:
    assert Gate.parse("accuracy.clean_accuracy=0.95") == Gate("accuracy.clean_accuracy", 0.95)
    with pytest.raises(ConfigError):
        Gate.parse("=1")
    with pytest.raises(ConfigError, match="finite"):
        Gate.parse("a=inf")
    with pytest.raises(ConfigError, match="test-size"):
        AuditConfig(test_size=1.5)
