from __future__ import annotations

from pathlib import Path

import pytest

from dlsec.audit.config import MAX_CONFIG_BYTES, AuditConfig, ConfigError, Gate, load_config


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
        ("sections = []\n", "sections: empty list"),
        ("threads = 100000\n", "threads: must be 0 (automatic) or 1.."),
        ("seed = -1\n", "seed: must be in 0.."),
        ("seed = 18446744073709551616\n", "seed: must be in 0..4294967295"),
        ("seed = 9223372036854775807\n", "seed: must be in 0..4294967295"),
        ('trust-code = "yes"\n', "trust-code: expected bool"),
        ('dataset = ""\n', "dataset: empty name"),
        ("[evasion]\nattacks = []\n", "[evasion] attacks: name one or more attacks"),
        ('[evasion]\nattacks = ["cw"]\n', "[evasion] attacks: cw is an L2 attack"),
        ('[evasion]\nattacks = ["deepfool"]\n', "[evasion] attacks: deepfool is an L2 attack"),
        ('[evasion]\nattacks = ["pgdd"]\n', "[evasion] attacks: unknown attack 'pgdd'"),
        ("[evasion]\neps = [nan]\n", "[evasion] eps, ensemble-eps and at-eps: values must be finite"),
        ("[evasion]\nensemble-eps = [inf]\n", "[evasion] eps, ensemble-eps and at-eps"),
        ("[blackbox]\nattacks = []\ntransfer = []\n", "[blackbox] attacks and transfer: both empty"),
        ('[blackbox]\ncraft = ["magic"]\n', "[blackbox] craft: one or more white-box attacks"),
        ("[blackbox]\neps = nan\n", "[blackbox] eps must be finite"),
        ("[poisoning]\nrates = [1.5]\n", "[poisoning] rates: each in (0, 1)"),
        ("[poisoning]\nfolds = 1\n", "[poisoning] epochs and batch-size must be >= 1, folds >= 2"),
        ('[poisoning]\nflip-sanitizers = ["nope"]\n', "[poisoning] sanitizers: unknown ['nope']"),
        ('[poisoning]\nflip-attacks = ["x"]\n', "[poisoning] flip-attacks"),
        ("[privacy]\nextraction-strategies = []\n", "[privacy] extraction-strategies: name one"),
        ('[privacy]\nevaluator = "nosuchnet"\n', "[privacy] evaluator: unknown model 'nosuchnet'"),
        ("[privacy]\nextraction-epochs = 0\n", "[privacy] label-only-noise, extraction-epochs"),
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


def test_valid_section_options_pass(tmp_path: Path) -> None:
    cfg = load_config(_toml(tmp_path, '[evasion]\nattacks = ["cw", "deepfool"]\nnorm = "l2"\n'))
    assert cfg.section_options["evasion"]["attacks"] == ["cw", "deepfool"]


def test_a_huge_config_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    p = tmp_path / "huge.toml"
    p.write_bytes(b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_config(p)
    p.write_text("a = " + "[" * 200_000 + "]" * 200_000 + "\n")  # under the cap, deeply nested
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(p)


def test_threads_limit_is_the_one_configure_threads_checks(tmp_path: Path) -> None:
    from dlsec.training import thread_limit

    assert load_config(_toml(tmp_path, f"threads = {thread_limit()}\n")).threads == thread_limit()
    with pytest.raises(ConfigError, match="threads"):
        load_config(None, {"threads": thread_limit() + 1})


@pytest.mark.parametrize("sections", ["", " , ", ","])
def test_an_empty_sections_flag_is_refused_not_all(sections: str, tmp_path: Path, capsys) -> None:
    from dlsec.cli import main

    code = main(["audit", "--sections", sections, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and lines == [
        "error: sections: empty list; name one or more sections, or leave it unset for all"
    ]
    assert not (tmp_path / "o").exists()
