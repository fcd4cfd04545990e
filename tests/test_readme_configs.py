"""The README's configs and commands run as written (issue #25).

README.md is read for every ``configs/*.yaml``, ``serve_configs/*.yaml`` and ``jobs/*.py`` it
names, and for every command it gives: ``rayrec <cmd> ...`` (also ``.venv/bin/rayrec``) and
``python jobs/NAME.py ...`` (alone or after ``ray job submit ... --``), in fenced blocks (one
shell line each, ``\\`` continuations joined, ``&&`` / ``;`` / ``|`` / ``&`` split, comments
dropped) and in inline code spans. Each command goes through the CLI's own argument parser and
config loading (:func:`rayrec.cli.build_parser`, :func:`rayrec.cli.config_from_args`), so a
missing config, an unknown subcommand or job, or a bad ``--set`` field fails here with the
field's name, without running anything. The launch commands in each config's top comment get the
same check, and the Ray Serve configs' ``args`` are built by the Serve import target itself.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import yaml
from rayrec.cli import COMMANDS, build_parser, config_from_args
from rayrec.config import load_config, parse_override

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIGS = ROOT / "configs"

# A path the README names: configs/X.yaml, serve_configs/X.yaml, jobs/X.py (not inside another path).
PATH = re.compile(r"(?<![\w./-])((?:serve_)?configs/[\w.-]+\.ya?ml|jobs/\w+\.py)\b")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
OPTIONAL = re.compile(r"\[[^\[\]]*\]")  # usage syntax: `rayrec config [--config FILE] [--set k=v]`
RAYREC = {"rayrec", ".venv/bin/rayrec"}
# How the README writes an override's syntax, not an override.
SYNTAX = {"section.field=value", "k=v", "KEY=VALUE"}


def _readme() -> str:
    return README.read_text()


def _tokens(text: str) -> list[list[str]]:
    """A shell line as its commands' words: quotes honoured, comments dropped, split at && ; | &."""
    lex = shlex.shlex(OPTIONAL.sub(" ", text), posix=True, punctuation_chars=True)
    lex.whitespace_split, lex.commenters = True, "#"
    try:
        words = list(lex)
    except ValueError:  # an unbalanced quote in prose: plain words
        words = text.split("#")[0].split()
    out, cur = [], []
    for w in words:
        if w and set(w) <= set("&;|"):
            out.append(cur)
            cur = []
        elif w != "...":
            cur.append(w)
    return [c for c in [*out, cur] if c]


def _commands(words: list[str]) -> tuple[str, list[str]] | None:
    """(how it runs, argv for `rayrec`) of a command in ``words``, or None when there is none.

    ``rayrec CMD ARGS`` -> ("rayrec", [CMD, *ARGS]); ``python jobs/NAME.py ARGS`` (after
    ``ray job submit ... --`` too) -> ("jobs/NAME.py", [the job's command, *ARGS])."""
    if words[0] in RAYREC:
        return ("rayrec", words[1:]) if len(words) > 1 else None
    for i, w in enumerate(words[:-1]):
        if re.fullmatch(r"python3?", w) and words[i + 1].startswith("jobs/"):
            return words[i + 1], words[i + 2:]
    return None


def _shell_lines(text: str) -> list[str]:
    """A fenced block's lines with ``\\`` continuations joined."""
    return re.sub(r"\\\n", " ", text).splitlines()


def discover(text: str) -> tuple[list[str], list[tuple[str, list[str]]], list[list[str]]]:
    """Paths named, commands given (how it runs, argv) and bare ``--set`` spans of a README."""
    paths = sorted(set(PATH.findall(text)))
    commands: list[tuple[str, list[str]]] = []
    for block in FENCE.findall(text):
        for line in _shell_lines(block):
            commands += [c for words in _tokens(line) if (c := _commands(words))]
    bare_sets = []
    for span in SPAN.findall(FENCE.sub("", text)):
        for words in _tokens(span.replace("\n", " ")):
            if c := _commands(words):
                commands.append(c)
            elif words[0] == "--set":
                bare_sets.append(words)
    unique = list({(how, tuple(argv)): (how, argv) for how, argv in commands}.values())
    return paths, unique, bare_sets


def top_comment_commands(path: Path) -> list[tuple[str, list[str]]]:
    """The commands in a config's leading comment block: in code spans, or a line of their own."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#"))
    text = "\n".join(lines)
    found = []
    for line in [s.replace("\n", " ") for s in SPAN.findall(text)] + _shell_lines(SPAN.sub(" ", text)):
        found += [c for words in _tokens(line) if (c := _commands(words))]
    return found


def check_command(how: str, argv: list[str]) -> None:
    """Parse ``argv`` with the CLI's parser and load its config and overrides as the CLI does.

    A ``--config`` under configs/ must exist and validate; any other (``my_run.yaml``,
    ``FILE``) stands for the reader's own file, so the overrides are checked on the defaults."""
    if how != "rayrec":
        job = ROOT / how
        assert job.is_file(), f"{how}: no such job file"
        named = re.search(r'job_main\("([\w-]+)"\)', job.read_text())
        assert named, f"{how} does not call rayrec.cli.job_main"
        argv = [named.group(1), *argv]
    command = argv[0]
    if command in ("--help", "-h"):  # `rayrec --help`
        return
    assert command in COMMANDS, f"`rayrec {command}`: no such subcommand (known: {', '.join(COMMANDS)})"
    if len(argv) == 1 or {"--help", "-h"} & set(argv):
        return
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"`rayrec {' '.join(argv)}`: {err.getvalue().strip()}") from None
    if args.config is not None:
        if re.match(r"(\./)?configs/", args.config):
            args.config = str(ROOT / args.config)
        else:
            args.config = None
    config_from_args(args)  # a ConfigError names the bad field


PATHS, COMMAND_LIST, BARE_SETS = discover(_readme())
CONFIG_FILES = sorted(p.relative_to(ROOT).as_posix() for p in CONFIGS.glob("*.yaml"))


def _id(how: str, argv: list[str]) -> str:
    return " ".join(["rayrec" if how == "rayrec" else f"python {how}", *argv])


def test_discovery_finds_the_readme_commands() -> None:
    """The parser above sees what a reader sees (so an empty discovery cannot pass)."""
    configs = {p for p in PATHS if p.startswith("configs/")}
    assert {"configs/demo.yaml", "configs/ml-latest-small.yaml", "configs/smollm2-ranker.yaml",
            "configs/generator.yaml"} <= configs
    ids = {_id(how, argv) for how, argv in COMMAND_LIST}
    assert "rayrec main --config configs/demo.yaml" in ids
    assert "rayrec train-generator --config configs/generator.yaml" in ids
    assert any(i.startswith("python jobs/preprocess.py --config configs/ml-latest-small.yaml") for i in ids)
    assert "rayrec catalog add --file items.jsonl" in ids  # [--url ...] is usage syntax


@pytest.mark.parametrize("path", PATHS)
def test_readme_path_exists(path: str) -> None:
    assert (ROOT / path).is_file(), f"README names {path}, which does not exist"


@pytest.mark.parametrize("path", [p for p in PATHS if p.startswith("configs/")])
def test_readme_config_validates(path: str) -> None:
    load_config(ROOT / path)  # the CLI's loader: a ConfigError names the bad field


@pytest.mark.parametrize(("how", "argv"), COMMAND_LIST, ids=[_id(h, a)[:120] for h, a in COMMAND_LIST])
def test_readme_command_validates(how: str, argv: list[str]) -> None:
    check_command(how, argv)


@pytest.mark.parametrize("words", BARE_SETS, ids=[" ".join(w)[:120] for w in BARE_SETS])
def test_readme_overrides_validate(words: list[str]) -> None:
    """A ``--set k=v`` the prose gives on its own is a real field with a valid value."""
    overrides = dict(parse_override(w) for w in words[1::2] if w not in SYNTAX)
    load_config(overrides=overrides)


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_config_documents_its_launch_command(path: str) -> None:
    """Every configs/*.yaml is named in the README, and its top comment gives the command(s)
    that run it, which validate like the README's."""
    assert path in PATHS, f"{path} is not named in the README"
    found = top_comment_commands(ROOT / path)
    assert any(path in argv for _, argv in found), f"{path}: no `... --config {path}` in its top comment"
    for how, argv in found:
        check_command(how, argv)


def _serve_applications(path: Path) -> list[dict]:
    raw = yaml.safe_load(path.read_text())
    if raw.get("kind") == "RayService":  # KubeRay: the Serve config is a string inside the manifest
        raw = yaml.safe_load(raw["spec"]["serveConfigV2"])
    return raw["applications"]


@pytest.mark.parametrize("path", [p for p in PATHS if p.startswith("serve_configs/")])
def test_readme_serve_config_builds(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Serve config parses, and its rayrec application's args (a config file and dotted
    overrides) validate through the import target, rayrec.serving.app:build_app."""
    from rayrec.serving.app import build_app

    monkeypatch.chdir(ROOT)  # a relative `config:` resolves as under `serve run` from the repo
    apps = _serve_applications(ROOT / path)
    assert apps, f"{path}: no applications"
    for app in apps:
        if app["import_path"] == "rayrec.serving.app:build_app":
            build_app(dict(app.get("args") or {}))


def test_the_check_rejects_a_missing_config_and_a_bad_field() -> None:
    """What a stale README line looks like fails, naming what is wrong."""
    from rayrec.errors import ConfigError

    text = ("```bash\nrayrec train --config configs/nope.yaml\n```\n"
            "`rayrec evaluate --config configs/demo.yaml --set evaluate.max_userz=3`\n"
            "`python jobs/nope.py --config configs/demo.yaml` and `rayrec trian --out x`\n")
    paths, commands, _ = discover(text)
    assert "configs/nope.yaml" in paths and not (ROOT / "configs/nope.yaml").exists()
    by_id = {_id(h, a): (h, a) for h, a in commands}
    with pytest.raises(ConfigError, match="config file not found"):
        check_command(*by_id["rayrec train --config configs/nope.yaml"])
    with pytest.raises(ConfigError, match="evaluate.max_userz: unknown field"):
        check_command(*by_id["rayrec evaluate --config configs/demo.yaml --set evaluate.max_userz=3"])
    with pytest.raises(AssertionError, match="no such job file"):
        check_command(*by_id["python jobs/nope.py --config configs/demo.yaml"])
    with pytest.raises(AssertionError, match="no such subcommand"):
        check_command(*by_id["rayrec trian --out x"])
