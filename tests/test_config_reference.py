"""config.toml is the one config reference: every key the loader accepts appears in it."""

import dataclasses
import re
import types
import typing

from monitor.config import Config, _fields, _is_secret, _split_annotated
from tests.conftest import ROOT


def dataclass_of(tp):
    base, _ = _split_annotated(tp)
    origin = typing.get_origin(base)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(base) if a is not type(None)]
        return dataclass_of(options[0]) if len(options) == 1 else None
    if origin in (list, dict):
        return dataclass_of(typing.get_args(base)[-1])
    return base if dataclasses.is_dataclass(base) else None


def all_keys(cls, path=()):
    for name, (_, tp) in _fields(cls).items():
        yield (*path, name), tp
        inner = dataclass_of(tp)
        if inner is not None:
            yield from all_keys(inner, (*path, name))


def test_every_key_is_documented_in_config_toml():
    text = (ROOT / "config.toml").read_text()
    missing = []
    for path, tp in all_keys(Config):
        key = path[-1]
        names = [key, f"{key}_file", f"{key}_env"] if _is_secret(tp) else [key]
        documented = any(
            re.search(rf"^\s*#?\s*{re.escape(n)}\s*=", text, re.M)
            or re.search(rf"^\s*#?\s*\[\[?[\w.]*\b{re.escape(n)}\]\]?", text, re.M)
            for n in names
        )
        if not documented:
            missing.append(".".join(path))
    assert missing == [], f"keys missing from config.toml: {missing}"
