"""Load YAML into the pydantic models, with errors that name file, line and field.

PyYAML's node tree keeps the position of every key and value; we keep a map
from each value's path (``("rtp", "port_min")``) to its line so a pydantic
error location can be turned into ``server.yaml:12: rtp.port_min: ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .schema import PromptsConfig, ServerConfig
from .steps import untagged

M = TypeVar("M", bound=BaseModel)
Path_ = tuple[str | int, ...]


def shown_path(path: str | Path) -> str:
    """A file as messages name it: relative to the working directory when it lies below it,
    so server.yaml and the prompts file it points to read alike however they were given."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


class ConfigError(Exception):
    """One or more problems in a config file; ``str()`` lists them one per line."""

    def __init__(self, problems: list[tuple[str, int | None, str, str]]):
        self.problems = problems  # (file, line, field, message)
        super().__init__("\n".join(self.format(p) for p in problems))

    @staticmethod
    def format(problem: tuple[str, int | None, str, str]) -> str:
        file, line, fld, msg = problem
        file = shown_path(file)
        where = f"{file}:{line}" if line else file
        return f"{where}: {fld}: {msg}" if fld else f"{where}: {msg}"


class _Loader(yaml.SafeLoader):
    pass


def _to_python(node: yaml.Node, path: Path_, lines: dict[Path_, int], loader: _Loader) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise ConfigError([("", key_node.start_mark.line + 1, "", "mapping keys must be scalars")])
            key = str(key)
            out[key] = _to_python(value_node, path + (key,), lines, loader)
            lines[path + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, path + (i,), lines, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def read_yaml(path: Path) -> tuple[Any, dict[Path_, int]]:
    """Parse a YAML file into plain data plus a path → line map."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([(name, None, "", f"cannot read: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([(name, None, "", "not UTF-8 text")]) from None
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise ConfigError([(name, line, "", f"YAML syntax: {exc.problem}")]) from None
    lines: dict[Path_, int] = {}
    if node is None:
        return {}, lines
    try:
        return _to_python(node, (), lines, _Loader("")), lines
    except ConfigError as exc:
        raise ConfigError([(name, p[1], p[2], p[3]) for p in exc.problems]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([(name, None, "", f"YAML: {exc}")]) from None


def _line_of(loc: Path_, lines: dict[Path_, int]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def validate(model: type[M], data: Any, path: Path, lines: dict[Path_, int], **context: Any) -> M:
    try:
        return model.model_validate(data, context=context or None)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = untagged(tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))))
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc += (str(err.get("ctx", {}).get("discriminator", "kind")).strip("'"),)
            field = ".".join(str(p) for p in loc)
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            problems.append((str(path), _line_of(loc, lines), field, msg))
        raise ConfigError(problems) from None


def load_server(path: str | Path) -> ServerConfig:
    p = Path(path)
    data, lines = read_yaml(p)
    cfg = validate(ServerConfig, data, p, lines)
    cfg.source = p
    return cfg


def load_prompts(path: str | Path) -> PromptsConfig:
    """The prompts file, validated; unknown scripts or voices are errors, the rest warnings."""
    p = Path(path)
    data, lines = read_yaml(p)
    if isinstance(data, dict) and ("source" in data or "warnings" in data):
        key = "source" if "source" in data else "warnings"
        raise ConfigError([(str(p), lines.get((key,)), key, "unknown field")])
    data = PromptsConfig.upgrade(data, lines)
    cfg = validate(PromptsConfig, data, p, lines)
    cfg.source = p
    errors, warnings = cfg.references()

    def where(loc: tuple, msg: str) -> tuple[str, int | None, str, str]:
        return (str(p), _line_of(loc, lines), ".".join(str(x) for x in loc), msg)

    if errors:
        raise ConfigError([where(loc, msg) for loc, msg in errors])
    cfg.warnings = [ConfigError.format(where(loc, msg)) for loc, msg in warnings]
    return cfg
