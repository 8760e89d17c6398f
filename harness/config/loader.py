"""YAML → typed, frozen config objects, with errors that name file, line and key path.

Precedence: model defaults < YAML file < ``--set key.path=value`` overrides.

Every problem found is reported at once, one line each::

    sweeps/bad.yaml:12: train.lr: expected a number, got 'fast'
    sweeps/bad.yaml:3: methods[1]: 'irepa2' is not allowed (did you mean 'irepa'?); allowed: irepa, none, repa
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from harness.errors import ConfigError, did_you_mean, format_allowed

M = TypeVar("M", bound=BaseModel)
KeyPath = tuple[str | int, ...]


# ---------------------------------------------------------------------------------------------
# YAML with line numbers
# ---------------------------------------------------------------------------------------------
MAX_FILE_BYTES = 1 << 20  # a config file larger than 1 MiB is refused unread
MAX_ALIASES = 1_000  # ``*name`` references per document (encoders.yaml: 98)
MAX_NODES = 50_000  # nodes after alias and merge-key expansion (encoders.yaml: 2,162)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as ``1e-4`` (PyYAML reads a string),
    and that counts aliases and expanded nodes so that an alias bomb fails fast."""

    def __init__(self, stream: str, name: str = "<string>") -> None:
        super().__init__(stream)
        self.name = name
        self.aliases = 0
        self.nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                line = self.peek_event().start_mark.line + 1
                raise ConfigError(
                    f"{self.name}:{line}: more than {MAX_ALIASES:,} YAML aliases (*name); "
                    "refusing to expand them (an alias bomb?)",
                    hint="write the values out, or split the file",
                )
        return super().compose_node(parent, index)

    def over_budget(self, n: int) -> bool:
        """Count ``n`` more expanded nodes; True once there are more than :data:`MAX_NODES`."""
        self.nodes += n
        return self.nodes > MAX_NODES

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        super().flatten_mapping(node)  # merge keys (<<: *name) copy entries: count them
        if self.over_budget(len(node.value)):
            raise ConfigError(_too_many_nodes(f"{self.name}:{node.start_mark.line + 1}"))


def _too_many_nodes(where: str) -> str:
    return (
        f"{where}: the YAML expands to more than {MAX_NODES:,} nodes through aliases (*name) "
        "or merge keys (<<); refusing to expand it (an alias bomb?)"
    )


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


@dataclass
class YamlDoc:
    """A parsed YAML document: its data, the line of every key path (1-based) and the
    ``--set`` option that set (or created) each key path given on the command line."""

    path: str
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    set_by: dict[KeyPath, str] = field(default_factory=dict)

    def line_of(self, key_path: KeyPath) -> int | None:
        for end in range(len(key_path), -1, -1):
            if key_path[:end] in self.lines:
                return self.lines[key_path[:end]]
        return None

    def where(self, key_path: KeyPath) -> str:
        """``file:line`` of ``key_path`` (or of its nearest parent); ``--set KEY=VALUE`` for a
        key path that option set or created."""
        for end in range(len(key_path), -1, -1):
            if key_path[:end] in self.set_by:
                return f"--set {self.set_by[key_path[:end]]}"
            if key_path[:end] in self.lines:
                return f"{self.path}:{self.lines[key_path[:end]]}"
        return self.path


def _construct(node: yaml.Node, loader: _Loader, doc: YamlDoc, key_path: KeyPath) -> Any:
    """Build ``node`` as plain data, recording the line of every key path; aliases are expanded
    (each use is a fresh copy), within :data:`MAX_NODES`."""
    if loader.over_budget(1):
        top = key_path[:1]
        raise ConfigError(
            _too_many_nodes(f"{doc.where(top)}: {dotted(top) or '<top>'}"),
            hint="config files are small: write the values out instead of nesting aliases",
        )
    doc.lines.setdefault(key_path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) or isinstance(key, bool):
                raise ConfigError(
                    f"{doc.path}:{key_node.start_mark.line + 1}: keys must be strings"
                )
            key = str(key)
            if key in out:
                raise ConfigError(
                    f"{doc.path}:{key_node.start_mark.line + 1}: "
                    f"{dotted((*key_path, key))}: duplicate key"
                )
            doc.lines[(*key_path, key)] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, loader, doc, (*key_path, key))
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, loader, doc, (*key_path, i)) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml(path: str | Path) -> YamlDoc:
    """Parse one YAML file into a :class:`YamlDoc`; every failure is a :class:`ConfigError`."""
    shown = str(path)
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{shown}: no such file", hint="check the path (relative to the cwd)")
    if path.is_dir():
        raise ConfigError(f"{shown}: is a directory, expected a YAML file")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(_too_big(shown, size))
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{shown}: cannot read file: {exc}") from exc
    return parse_yaml(text, shown)


# what PyYAML's context ("while scanning a quoted scalar") left open when the file ended
_UNCLOSED = {
    "quoted scalar": "this quoted string is never closed",
    "flow sequence": "this [ list is never closed with ]",
    "flow mapping": "this { mapping is never closed with }",
}


def _syntax_error(name: str, text: str, exc: yaml.MarkedYAMLError) -> str:
    """``file:line:col: YAML syntax error: ...``; something left open when the file ends is
    reported where it opens (the end of the file is past its last line)."""
    mark, problem = exc.problem_mark or exc.context_mark, exc.problem or str(exc)
    context = (exc.context or "").removeprefix("while scanning a ").removeprefix("while parsing a ")
    at_end = exc.problem_mark is not None and exc.problem_mark.index >= len(text.rstrip())
    if at_end and exc.context_mark is not None:
        mark = exc.context_mark
        opened = _UNCLOSED.get(context, f"this {context} is never closed")
        problem = f"{opened}: the file ends first ({problem})"
    where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
    return f"{name}{where}: YAML syntax error: {problem}"


def _too_big(name: str, size: int) -> str:
    return (
        f"{name}: {size:,} bytes; config files are limited to {MAX_FILE_BYTES:,} bytes "
        "(is this really a config file?)"
    )


def parse_yaml(text: str, name: str = "<string>") -> YamlDoc:
    """Parse YAML text (``name`` is shown in errors) into a :class:`YamlDoc`, within the size,
    alias and node limits; every failure is a :class:`ConfigError`."""
    doc = YamlDoc(path=name, data=None)
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(_too_big(name, len(text.encode("utf-8"))))
    if not text.strip():
        raise ConfigError(f"{name}:1: file is empty", hint="see the config reference in README.md")
    loader = _Loader(text, name)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{name}:1: file holds no YAML document (only comments?)")
        doc.data = _construct(node, loader, doc, ())
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_syntax_error(name, text, exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: YAML error: {exc}") from None
    finally:
        loader.dispose()
    if not isinstance(doc.data, dict):
        raise ConfigError(
            f"{name}:1: top level must be a mapping of keys, got {type(doc.data).__name__}"
        )
    return doc


# ---------------------------------------------------------------------------------------------
# --set key.path=value overrides
# ---------------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[KeyPath, Any]:
    """``"train.lr=3e-4"`` → ``(("train", "lr"), 0.0003)``; values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set train.steps=200")
    key, _, raw = text.partition("=")
    parts: list[str | int] = []
    for part in key.strip().split("."):
        if not part:
            raise ConfigError(f"--set {text!r}: empty key in path {key!r}")
        parts.append(int(part) if part.isdigit() else part)
    try:
        value = _parse_value(raw, f"--set {text!r}") if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: cannot parse value: {exc}") from None
    return tuple(parts), value


def _parse_value(raw: str, name: str) -> Any:
    """One YAML value, within the alias and node limits (``yaml.load`` shares aliased objects,
    which JSON encoding would then expand without bound)."""
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(_too_big(name, len(raw.encode("utf-8"))))
    loader = _Loader(raw, name)
    try:
        node = loader.get_single_node()
        return None if node is None else _construct(node, loader, YamlDoc(name, None), ())
    finally:
        loader.dispose()


def apply_overrides(doc: YamlDoc, overrides: Iterable[str]) -> None:
    """Set each ``KEY.PATH=VALUE``; the key path, and every mapping it creates, are recorded as
    set by that option (errors about them name the option, not a line of the file)."""
    for text in overrides:
        key_path, value = parse_override(text)
        node: Any = doc.data
        for depth, part in enumerate(key_path[:-1], start=1):
            if isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {dotted(key_path)} is not a mapping here")
            if part not in node:
                doc.set_by[key_path[:depth]] = text
            node = node.setdefault(part, {})
        last = key_path[-1]
        if (isinstance(node, list) and isinstance(last, int) and last < len(node)) or isinstance(
            node, dict
        ):
            node[last] = value
        else:
            raise ConfigError(f"--set {text!r}: {dotted(key_path)} is not a mapping here")
        doc.set_by[key_path] = text


# ---------------------------------------------------------------------------------------------
# Validation with readable errors
# ---------------------------------------------------------------------------------------------
def validate(model: type[M], doc: YamlDoc, overrides: Sequence[str] = ()) -> M:
    """Validate ``doc`` (after ``overrides``) against ``model``; raise one ConfigError listing all
    problems, each with ``file:line: key.path: message``."""
    apply_overrides(doc, overrides)
    try:
        return model.model_validate_json(json.dumps(doc.data), strict=True)
    except ValidationError as exc:
        raise ConfigError(render_errors(model, doc, exc)) from None


def render_errors(model: type[BaseModel], doc: YamlDoc, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        loc = tuple(p for p in loc if p not in ("function-after", "function-before"))
        if err["type"] == "value_error" and (named := _NAMED_KEY.match(_value_error_text(err))):
            loc = (*loc, *named.group(1).split("."))
        lines.append(f"{doc.where(loc)}: {dotted(loc) or '<top>'}: {_message(model, err, loc)}")
    return "\n".join(dict.fromkeys(lines))


def _message(model: type[BaseModel], err: dict[str, Any], loc: KeyPath) -> str:
    kind, value = err["type"], err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        return (
            f"unknown key{did_you_mean(loc[-1], allowed)}; allowed keys: {format_allowed(allowed)}"
        )
    if kind == "missing":
        return "required key is missing"
    if kind in ("literal_error", "enum"):
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"{value!r} is not allowed{did_you_mean(value, allowed)}; allowed: {format_allowed(allowed)}"
    if kind == "value_error":
        return _NAMED_KEY.sub("", _value_error_text(err))
    return f"{err['msg'].removeprefix('Input should be ').join(['expected ', ''])}, got {value!r}"


# A model validator names the offending key by starting its message with "@key.path: ".
_NAMED_KEY = re.compile(r"^@([\w.]+): ")


def _value_error_text(err: dict[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    return str(ctx.get("error", err["msg"])).removeprefix("Value error, ")


def _fields_at(model: type[BaseModel], loc: KeyPath) -> list[str]:
    """Field names of the (nested) model found at ``loc``; [] when it cannot be resolved."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (
            isinstance(current, type) and issubclass(current, BaseModel)
        ):
            current = _inner_model(current)
            if isinstance(part, int):
                continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(part)
        if info is None:
            return []
        current = _inner_model(info.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def dotted(loc: KeyPath) -> str:
    """``("train", "lr")`` → ``train.lr``; ``("encoders", 1)`` → ``encoders[1]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
