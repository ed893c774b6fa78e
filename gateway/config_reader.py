"""Reading a YAML config tree: `${VAR}` expansion and a walker that refuses unknown keys and
wrong types, each mistake one `ConfigError` line naming the file, the path inside it and the
fix. What the gateway's config holds, and its defaults, are `gateway.config`'s; this module
knows nothing of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any


class ConfigError(Exception):
    """A config mistake, worded for the person who made it."""

    def __init__(self, source: str, path: str, problem: str) -> None:
        self.source = source
        self.path = path
        self.problem = problem
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {problem}")


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: str, env: Mapping[str, str], source: str, path: str) -> str:
    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            source,
            path,
            f"${{{name}}} is not set; export {name}=... or write ${{{name}:-default}}",
        )

    return _VAR.sub(sub, value)


def expand_tree(node: Any, env: Mapping[str, str], source: str, path: str) -> Any:
    if isinstance(node, str):
        return _expand(node, env, source, path)
    if isinstance(node, list):
        return [expand_tree(v, env, source, f"{path}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {
            k: expand_tree(v, env, source, f"{path}.{k}" if path else str(k))
            for k, v in node.items()
        }
    return node


class Reader:
    """Walks one mapping of the YAML tree, refusing unknown keys and wrong types."""

    def __init__(self, source: str, path: str, node: Any) -> None:
        if not isinstance(node, dict):
            raise ConfigError(source, path or "(top level)", "expected a mapping of key: value")
        self.source, self.path, self.node = source, path, dict(node)

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.at(key), problem)

    def take(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        if key not in self.node or self.node[key] is None:
            self.node.pop(key, None)
            return default
        value = self.node.pop(key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool:
            raise self.fail(key, f"expected {kind_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise self.fail(key, f"expected {kind_name(kind)}, got {value!r}")
        return value

    def require(self, key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in self.node or self.node[key] in (None, ""):
            raise self.fail(key, "is required")
        return self.take(key, kind)

    def choice(self, key: str, options: tuple[str, ...], default: str | None = None) -> str:
        value = self.take(key, str, default)
        if value is None:
            raise self.fail(key, f"is required: one of {', '.join(options)}")
        if value not in options:
            raise self.fail(key, f"must be one of {', '.join(options)}, got {value!r}")
        return str(value)

    def positive(self, key: str, kind: type, default: Any = None) -> Any:
        value = self.take(key, kind, default)
        if value is not None and value <= 0:
            raise self.fail(key, f"must be greater than 0, got {value!r}")
        return value

    def at_least(self, key: str, kind: type, least: int, default: Any) -> Any:
        value = self.take(key, kind, default)
        if value < least:
            raise self.fail(key, f"must be {least} or more, got {value!r}")
        return value

    def done(self) -> None:
        for key in self.node:
            raise self.fail(str(key), "unknown key; check the spelling against config/example.yaml")


def kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    names |= {list: "a list", dict: "a mapping"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def str_list(r: Reader, key: str) -> tuple[str, ...] | None:
    value = r.take(key, list)
    if value is None:
        return None
    if not all(isinstance(v, str) for v in value):
        raise r.fail(key, "expected a list of strings")
    return tuple(value)


def read_section(cls: type, source: str, path: str, node: Any) -> Any:
    r = Reader(source, path, node)
    defaults = cls()
    values = {f.name: r.take(f.name, type(getattr(defaults, f.name))) for f in fields(cls)}
    r.done()
    return cls(**{k: v for k, v in values.items() if v is not None})


def read_list(r: Reader, key: str, read: Any) -> list[Any]:
    items = r.take(key, list, [])
    return [read(r.source, f"{r.at(key)}[{i}]", item) for i, item in enumerate(items)]
