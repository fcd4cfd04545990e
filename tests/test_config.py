from pathlib import Path

import pytest
from rayrec.config import load_config, parse_override
from rayrec.errors import ConfigError


def test_defaults_validate_and_resolve_paths(tmp_path: Path) -> None:
    cfg = load_config(overrides={"run_dir": str(tmp_path)})
    assert cfg.data_dir == str(tmp_path / "data")
    assert cfg.train.deepspeed.zero_stage == 2


def test_bad_field_names_field_and_allowed_values(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  deepspeed:\n    zero_stage: 5\nmodel:\n  kind: nope\n")
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    text = str(exc.value)
    assert "train.deepspeed.zero_stage" in text and "0, 1, 2 or 3" in text
    assert "model.kind" in text and "cross_encoder" in text


def test_unknown_field_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.bogus: unknown field"):
        load_config(overrides={"data.bogus": 1})


def test_override_parsing() -> None:
    assert parse_override("train.lr=1e-4") == ("train.lr", 1e-4)
    assert parse_override("explore.policies=[greedy, ucb1]") == ("explore.policies", ["greedy", "ucb1"])
    with pytest.raises(ConfigError):
        parse_override("train.lr")


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_turns_user_errors_into_one_line(tmp_path, capsys):
    """A bad config and a bad input file: a message naming the problem, non-zero exit,
    no traceback (ConfigError exits 2, DataError 1; both from rayrec.errors)."""
    from rayrec.cli import main

    assert main(["preprocess", "--set", "train.lr=fast"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rayrec preprocess: error: ") and "train.lr" in err and "Traceback" not in err
    bad = tmp_path / "events.csv"
    bad.write_text("")
    assert main(["preprocess", "--data", str(bad), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # (Ray may log before it)
    assert last.startswith("rayrec preprocess: error: ") and last.endswith("file is empty"), err
    assert "Traceback" not in err


def _all_fields(model_cls, prefix: str = ""):
    """(dotted path, FieldInfo) of every field of ``model_cls``, nested sections included."""
    from rayrec.configbase import Section

    for name, info in model_cls.model_fields.items():
        yield prefix + name, info
        if isinstance(info.annotation, type) and issubclass(info.annotation, Section):
            yield from _all_fields(info.annotation, f"{prefix}{name}.")


def test_every_config_field_has_a_description() -> None:
    from rayrec.config import RayrecConfig

    fields = list(_all_fields(RayrecConfig))
    assert len(fields) > 300  # every section was walked
    missing = [path for path, info in fields if not (info.description or "").strip()]
    assert not missing, f"fields without a description: {missing}"


def test_describe_yaml_round_trips_and_explains() -> None:
    import yaml
    from rayrec.configbase import describe_yaml

    cfg = load_config(None, {})
    text = describe_yaml(cfg)
    assert yaml.safe_load(text) == cfg.model_dump(mode="json")
    assert "# Most items a request may ask for." in text
    assert "\n  max_k: 100\n" in text  # nested under serve:, indented
    overridden = load_config(None, {"serve.max_k": 7, "explore.policies": ["greedy", "ucb1"],
                                    "train.lr": 1e-5})
    assert yaml.safe_load(describe_yaml(overridden)) == overridden.model_dump(mode="json")


def test_invalid_override_error_says_what_the_field_is() -> None:
    from rayrec.config import RayrecConfig

    description = RayrecConfig.model_fields["serve"].annotation.model_fields["max_k"].description
    with pytest.raises(ConfigError) as exc:
        load_config(overrides={"serve.max_k": 0})
    text = str(exc.value)
    assert text.startswith("invalid rayrec config (defaults + overrides):")
    assert "serve.max_k: " in text and "(got 0)" in text
    assert f"({description.rstrip('.')})" in text
    with pytest.raises(ConfigError, match=r"data.bogus: unknown field \(got 1\)$"):
        load_config(overrides={"data.bogus": 1})  # no such field: nothing to describe


def test_cli_config_prints_described_yaml(capsys) -> None:
    import yaml
    from rayrec.cli import main

    assert main(["config", "--set", "serve.max_k=7"]) == 0
    out = capsys.readouterr().out
    assert "max_k: 7" in out and "# Most items a request may ask for." in out
    assert yaml.safe_load(out) == load_config(None, {"serve.max_k": 7}).model_dump(mode="json")
