"""What every config section shares: the error type, casts, checks, key names.

A section is a frozen dataclass whose fields are run-config keys: a field's
key is its name in kebab case unless its ``metadata["key"]`` says otherwise
(``GuidanceConfig.model`` is ``guidance-model``). Flower's flat kebab-case
keys stay the interface; the sections only group them.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type, or out of range."""


def key_of(field: dataclasses.Field) -> str:
    """The run-config key of a section field."""
    return field.metadata.get("key", field.name.replace("_", "-"))


def keyed(default: Any, key: str) -> Any:
    """A field whose run-config key is not its name, e.g. ``keyed(16, "model-width")``."""
    return dataclasses.field(default=default, metadata={"key": key})


def section_keys(section: type) -> dict[str, dataclasses.Field]:
    """Run-config key -> field of a section class."""
    return {key_of(f): f for f in dataclasses.fields(section)}


def build_section(section: type, values: Mapping[str, Any]) -> Any:
    """A section from the run-config values of its keys (others ignored).

    Missing keys take the field's default; present ones are cast to the
    field's type, refusing lossy conversions.
    """
    kwargs = {
        f.name: cast(key, values[key], f.type)
        for key, f in section_keys(section).items()
        if key in values
    }
    return section(**kwargs)


def section_values(section: Any) -> dict[str, Any]:
    """The section's run-config mapping (kebab-case key -> value)."""
    return {key_of(f): getattr(section, f.name) for f in dataclasses.fields(section)}


def unknown_key_error(unknown: Iterable[str], known: Iterable[str]) -> ConfigError:
    """An error for misspelt keys that names the closest valid ones."""
    known = sorted(known)
    parts = []
    for key in sorted(unknown):
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        if not close:  # a shared word still helps: "rounds" -> num-server-rounds
            close = [
                k for k in known if any(w in k.split("-") for w in key.split("-"))
            ][:3]
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        parts.append(f"{key!r}{hint}")
    return ConfigError(
        f"unknown run-config key(s) {', '.join(parts)}; every key is listed with "
        "its default in pyproject.toml's [tool.flwr.app.config]"
    )


def cast(key: str, value: Any, type_name: str) -> Any:
    """Cast a TOML/CLI value to the field's type, refusing lossy conversions."""
    # Annotations are strings because of `from __future__ import annotations`.
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"run-config '{key}' must be true or false, got {value!r}")
    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"run-config '{key}' must be an int, got {value!r}")
        if float(value) != int(value):
            raise ConfigError(f"run-config '{key}' must be an int, got {value!r}")
        return int(value)
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"run-config '{key}' must be a number, got {value!r}")
        return float(value)
    if type_name == "str":
        if not isinstance(value, str):
            raise ConfigError(
                f"run-config '{key}' must be a string (quote it: {key}='...'), "
                f"got {value!r}"
            )
        return value
    raise TypeError(f"unsupported config field type {type_name} for '{key}'")


def check(ok: bool, key: str, value: Any, valid: str) -> None:
    """Raise a :class:`ConfigError` naming the key, the value and what is valid."""
    if not ok:
        raise ConfigError(
            f"run-config '{key}' = {value!r} is invalid; expected {valid}"
        )


def one_of(key: str, value: str, registry: Iterable[str]) -> None:
    """Raise unless ``value`` is one of ``registry``'s names (all listed)."""
    names = sorted(registry)
    if value not in names:
        raise ConfigError(f"unknown {key} {value!r}; valid: {', '.join(names)}")


def check_all(section: Any, keys: Iterable[str], ok, valid: str) -> None:
    """:func:`check` ``ok(value)`` for several keys of one section."""
    for key in keys:
        value = getattr(section, key.replace("-", "_"))
        check(ok(value), key, value, valid)
