"""configio: nested config dataclasses round-trip through dicts and TOML; errors name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from rwkv_swarm.util.configio import ConfigError, from_dict, from_toml, to_dict, to_toml


@dataclass(frozen=True)
class Inner:
    rate: float = 0.1
    steps: int = 3
    name: str | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")


@dataclass(frozen=True)
class Special(Inner):
    extra: tuple[float, float] = (0.5, 2.0)


@dataclass(frozen=True)
class Outer:
    kind: str = "plain"
    inner: Inner = field(default_factory=Inner)
    groups: tuple[str, ...] = ("a",)
    table: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None
    flag: bool = False

    @classmethod
    def _field_type(cls, name: str, data: dict[str, Any]) -> type | None:
        if name == "inner":
            return Special if data.get("kind", "plain") == "special" else Inner
        return None


def test_nested_configs_round_trip_through_dicts_and_toml():
    cfg = Outer(kind="special", inner=Special(rate=0.25, extra=(1.0, 3.0)), groups=("x", "y"),
                table={"id": "CartPole-v1", "mask": [0, 2]}, limit=7, flag=True)
    assert from_dict(Outer, to_dict(cfg)) == cfg
    assert from_toml(Outer, to_toml(cfg)) == cfg
    assert to_dict(cfg)["groups"] == ["x", "y"] and isinstance(from_dict(Outer, {}), Outer)


def test_none_values_are_left_out_of_toml_and_come_back_as_defaults():
    text = to_toml(Outer())
    assert "limit" not in text and "name" not in text
    assert from_toml(Outer, text) == Outer()


def test_the_field_type_hook_picks_the_nested_class_from_a_sibling_field():
    assert type(from_dict(Outer, {"kind": "special", "inner": {"extra": [1, 2]}}).inner) is Special
    with pytest.raises(ConfigError, match=r"inner\.extra: unknown key; Inner accepts"):
        from_dict(Outer, {"inner": {"extra": [1, 2]}})


@pytest.mark.parametrize("data, key, message", [
    ({"inner": {"rate": "fast"}}, "inner.rate", r"got 'fast', expected a number"),
    ({"inner": {"steps": 2.5}}, "inner.steps", r"got 2\.5, expected an integer"),
    ({"inner": {"steps": True}}, "inner.steps", r"got True, expected an integer"),
    ({"groups": ["a", 3]}, r"groups\[1\]", "got 3, expected a string"),
    ({"groups": "a"}, "groups", "expected a list of a string"),
    ({"kind": "special", "inner": {"extra": [1]}}, "inner.extra", "expected a list of 2 values"),
    ({"limit": "many"}, "limit", "expected an integer or nothing"),
    ({"inner": 3}, "inner", r"expected a table \(Inner\)"),
    ({"nope": 1}, "nope", r"unknown key; Outer accepts \['kind', 'inner'"),
    ({"inner": {"rate": -1.0}}, "inner", r"rate must be > 0, got -1\.0"),
])
def test_bad_values_name_the_dotted_key_and_what_is_accepted(data, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        from_dict(Outer, data)
    assert info.value.key.replace("\\", "") == key.replace("\\", "")


def test_toml_syntax_errors_are_config_errors():
    with pytest.raises(ConfigError, match="not valid TOML"):
        from_toml(Outer, "kind = ")
