"""One option schema: the CLI flags of the training commands and the dataclasses (DataOptions, ModelOptions,
TrainConfig) agree on names, defaults, types and choices. Generic over the fields, so a new option only needs its
field (and its flag in options.py, which this test asks for)."""
from __future__ import annotations

import argparse
import inspect
import re
from dataclasses import MISSING, fields

import pytest

from gapvision.cli import build_parser
from gapvision.data import sources
from gapvision.errors import ConfigError
from gapvision.options import (CHOICES, GROUPS, LOAD_OPTIONS, OPTION_NAMES, POSITIONAL, DataOptions, collect,
                               schema_field)
from gapvision.train.config import TrainConfig
from gapvision.train.pipeline import split_options

FIELDS = [f for g in GROUPS for f in fields(g)]


def _actions(command: str) -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions}


@pytest.mark.parametrize("command", ["train", "compare"])
def test_every_option_field_has_its_flag(command):
    actions = _actions(command)
    expected = [f.name for f in FIELDS if f.name not in POSITIONAL]
    missing = [n for n in expected if n not in actions]
    assert not missing, f"`gapvision {command}` lacks the flags of {missing}: add them in options.py"
    for name in expected:
        assert f"--{name.replace('_', '-')}" in actions[name].option_strings, name
    assert "data" in actions and "model" in actions


@pytest.mark.parametrize("field", [f for f in FIELDS if f.name not in POSITIONAL], ids=lambda f: f.name)
def test_flag_agrees_with_its_field(field):
    action = _actions("train")[field.name]
    assert action.default is None, "flags default to None so that the dataclass default applies"
    default = field.default if field.default is not MISSING else None
    if field.type == "bool":
        assert isinstance(action, argparse._StoreTrueAction) and default is False
    elif "str" in str(field.type):  # a number or a word (--lr 1e-3, 1e-4:1e-3, auto): parsed by the dataclass
        assert action.type is str, (action.type, field.type)
    elif isinstance(default, (int, float)) and not isinstance(default, bool):
        assert action.type is type(default), (action.type, default)
    shown = re.findall(r"\(default ([^)]+)\)", action.help or "")
    if shown and default not in (None, False):
        assert shown == [str(default)] or field.name in ("workers",), (shown, default)  # workers: -1 reads "auto"
    if field.name in CHOICES:
        assert tuple(action.choices) == CHOICES[field.name]
        assert str(default) in CHOICES[field.name], "the default is one of the choices"
    else:
        assert action.choices is None


@pytest.mark.parametrize("name", [n for n in CHOICES if n in {f.name for f in fields(TrainConfig)}])
def test_train_config_accepts_exactly_the_flag_choices(name):
    for value in CHOICES[name]:
        TrainConfig(**{name: value})
    with pytest.raises(ConfigError):
        TrainConfig(**{name: "no-such-value"})


def test_data_and_model_choices_are_what_their_consumers_check():
    from gapvision.data.memory import use_in_memory
    from gapvision.data.transforms import NORMALIZE_PRESETS, Preprocess
    from gapvision.models.classifier import create_model

    assert set(CHOICES["normalize"]) == {"auto", *NORMALIZE_PRESETS}
    pre = Preprocess(3, 16)
    for mode in CHOICES["in_memory"]:
        use_in_memory(mode, 1, pre)
    with pytest.raises(ConfigError):
        use_in_memory("no-such-value", 1, pre)
    for freeze in CHOICES["freeze"]:
        create_model("gapcnn", "gap", 2, img_size=16, freeze=freeze)
    with pytest.raises(ConfigError):
        create_model("gapcnn", "gap", 2, img_size=16, freeze="no-such-value")


def test_a_full_command_line_is_one_set_of_known_options():
    argv = ["train", "--data", "d"]
    for f in FIELDS:
        if f.name in POSITIONAL:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if f.type == "bool":
            argv.append(flag)
        elif f.name in CHOICES:
            argv += [flag, CHOICES[f.name][-1]]
        elif f.type in ("int", "int | None"):
            argv += [flag, "3"]
        elif f.type in ("float", "float | None"):
            argv += [flag, "0.5"]
        else:
            argv += [flag, "x"]
    given = collect(build_parser().parse_args(argv))
    assert set(given) == set(OPTION_NAMES)
    assert set(OPTION_NAMES) == {f.name for f in FIELDS} - set(POSITIONAL)
    dopts, mopts, tcfg = split_options({k: v for k, v in given.items() if k not in ("optimizer", "lr")})
    assert dopts.augment == CHOICES["augment"][-1] and tcfg.epochs == 3


def test_data_loading_options_are_declared_once():
    load_fields = {f.name for f in fields(sources.LoadOptions)}
    for fn in (sources.load_data, sources.load_images):
        params = set(inspect.signature(fn).parameters)
        assert set(LOAD_OPTIONS) <= params and set(LOAD_OPTIONS) <= load_fields, fn.__name__
    assert DataOptions(val_split=0.3).load_kwargs() == {n: getattr(DataOptions(val_split=0.3), n) for n in LOAD_OPTIONS}
    assert schema_field("val_split").default == sources.LoadOptions().val_split
