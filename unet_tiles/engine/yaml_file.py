"""YAML files that people write (``--config FILE``, ``--cluster FILE.yaml``), read safely
and with the line of every key, so that each problem is one line naming file and line.

``load`` gives the document as ``Located`` values: a mapping is a ``dict`` of its keys'
``Located`` values (each with the line of its key), a list a ``list`` of ``Located``
items, a scalar its Python value (``yaml.SafeLoader``'s, so never an arbitrary object)
and the text as written. Merge keys (``<<: *defaults``) are resolved and give way to the
mapping's own keys, as YAML says; a key written twice in one mapping is an error.
``cli/config.py`` checks its options on the nodes itself and shares the helpers below.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet_tiles.errors import UsageError

STR_TAG = "tag:yaml.org,2002:str"
MERGE_TAG = "tag:yaml.org,2002:merge"
NULL_TAG = "tag:yaml.org,2002:null"
# Deeper than any file a person writes; a guard against self-referencing aliases.
MAX_DEPTH = 64


@dataclass(frozen=True)
class Located:
    """One value of the file and its line (1-based; 0: not from a file).

    ``value``: ``dict[str, Located]`` for a mapping, ``list[Located]`` for a list, the
    Python value of a scalar. ``text``: a scalar as written (``24:00:00``, which YAML
    1.1 reads as the integer 86400), None for a mapping or a list.
    """

    value: Any
    line: int
    text: str | None = None

    @classmethod
    def wrap(cls, value: Any, line: int = 0) -> Located:
        """A plain Python value (dicts, lists, scalars) as ``Located`` values without lines."""
        if isinstance(value, Located):
            return value
        if isinstance(value, dict):
            return cls({str(k): cls.wrap(v, line) for k, v in value.items()}, line)
        if isinstance(value, list | tuple):
            return cls([cls.wrap(v, line) for v in value], line)
        return cls(value, line, None if value is None else str(value))

    def plain(self) -> Any:
        """The value without lines: dicts, lists and scalars."""
        if isinstance(self.value, dict):
            return {key: item.plain() for key, item in self.value.items()}
        if isinstance(self.value, list):
            return [item.plain() for item in self.value]
        return self.value


def read_file(path: str, what: str) -> bytes:
    """The bytes of ``path``; a one-line ``UsageError`` naming ``what`` if unreadable."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a {what}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def load(path: str, what: str) -> Located | None:
    """The YAML document in ``path`` with lines; None if it is empty or only comments."""
    import yaml

    data = read_file(path, what)
    loader = yaml.SafeLoader(data)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        return _located(root, loader, path, root.start_mark.line + 1, 0)
    except yaml.MarkedYAMLError as exc:
        raise UsageError(f"{path}{yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: invalid YAML: {one_line(str(exc))}") from None
    finally:
        loader.dispose()


def _located(node: Any, loader: Any, path: str, line: int, depth: int) -> Located:
    import yaml

    if depth > MAX_DEPTH:
        raise UsageError(f"{path}:{line}: nested more than {MAX_DEPTH} levels deep "
                         "(a self-referencing alias?)")
    if isinstance(node, yaml.SequenceNode):
        return Located([_located(item, loader, path, item.start_mark.line + 1, depth + 1)
                        for item in node.value], line)
    if isinstance(node, yaml.MappingNode):
        explicit = {id(key) for key, _ in node.value if key.tag != MERGE_TAG}
        loader.flatten_mapping(node)
        items: dict[str, Located] = {}
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != STR_TAG:
                raise UsageError(f"{path}:{key_line}: keys must be names, got "
                                 f"{shown_node(key_node, loader)}")
            key = str(key_node.value)
            if id(key_node) in explicit:
                if key in first:
                    raise UsageError(f"{path}:{key_line}: {key!r} is set twice (first on "
                                     f"line {first[key]})")
                first[key] = key_line
            # A merged mapping's keys give way to the mapping's own.
            items[key] = _located(value_node, loader, path, key_line, depth + 1)
        return Located(items, line)
    return Located(loader.construct_object(node), line, str(node.value))


def yaml_problem(exc: Any) -> str:
    """``:LINE: invalid YAML: problem (context on line N)`` of a ``MarkedYAMLError``."""
    mark = exc.problem_mark or exc.context_mark
    line = f":{mark.line + 1}" if mark is not None else ""
    problem = one_line(str(exc.problem or exc.context or "unreadable"))
    context = ""
    if exc.problem and exc.context and exc.context_mark is not None:
        context = f" ({one_line(str(exc.context))} on line {exc.context_mark.line + 1})"
    return f"{line}: invalid YAML: {problem}{context}"


def shown_node(node: Any, loader: Any) -> str:
    """A YAML node as a message shows it: ``a mapping``, ``a list`` or its value."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return shown(loader.construct_object(node))


def shown(value: Any) -> str:
    """A value as a message shows it: YAML's words for null and booleans, short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def one_line(text: str) -> str:
    return " ".join(text.split())
