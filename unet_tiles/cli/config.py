"""``--config FILE``: a command's options from a YAML file, checked; flags win over it.

The file is a YAML mapping. Its keys are the options' long names without the
dashes, spelled with dashes or underscores (``block-size`` or ``block_size``),
the options' Python names (``model_dir``, ``output_kind``) and the positional
arguments by name (``input`` and ``output`` for ``segment``, ``root`` for
``archive`` and ``watch``). Where a positional argument and an option share a
name (``segment``'s OUTPUT and ``--output``), the key names the positional
argument and the option is reached by its Python name (``output_kind``).

Each value is checked against its option before anything runs: an integer for
``--block-size``, a number for ``--quiet-seconds``, a string for paths, true or
false for a flag, one of the choices where there are choices; null only where
the option's default is "not given". A key that is not an option, a value of
the wrong type, a key set twice, invalid YAML or a file that cannot be read is
one ``UsageError`` line naming the file and the line.

Precedence: command line, then the file, then the defaults. The file's values
become the subcommand's defaults for one parse of the command line, so every
flag given explicitly wins; options the parser requires (``--model``,
``--output-root``) may come from the file alone. Positional arguments on the
command line fill the positions from the first, the file's fill the rest.

``effective_options`` gives the merged values of a run (``args.effective_config``
after ``parse_command_line``): what the provenance record keeps.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unet_tiles.engine.yaml_file import MERGE_TAG as _MERGE_TAG
from unet_tiles.engine.yaml_file import STR_TAG as _STR_TAG
from unet_tiles.engine.yaml_file import one_line as _one_line
from unet_tiles.engine.yaml_file import read_file
from unet_tiles.engine.yaml_file import shown as _shown
from unet_tiles.engine.yaml_file import shown_node as _shown_node
from unet_tiles.engine.yaml_file import yaml_problem as _yaml_problem
from unet_tiles.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Sequence

CONFIG_DEST = "config"
# The actions a file may set: a value (``store``) or a flag (``store_true`` / ``store_false``).
_FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction)
_SETTABLE = (argparse._StoreAction, *_FLAGS)


@dataclass(frozen=True)
class Setting:
    """One option set by the file: the value for its ``dest``, the key as written, its line."""

    value: Any
    key: str
    line: int


def config_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The keys a config file may use for ``parser``'s options, and the option of each."""
    settable = [a for a in parser._actions
                if isinstance(a, _SETTABLE) and a.dest not in (CONFIG_DEST, argparse.SUPPRESS)]
    keys: dict[str, argparse.Action] = {}
    # Positional arguments first: they keep their name where an option shares it.
    for action in settable:
        if not action.option_strings:
            keys.setdefault(action.dest, action)
    for action in settable:
        for option in action.option_strings:
            if option.startswith(2 * option[0]):
                keys.setdefault(_normal(option[2:]), action)
    for action in settable:
        if action.option_strings:
            keys.setdefault(action.dest, action)
    return keys


def load_config(path: str, parser: argparse.ArgumentParser) -> dict[str, Setting]:
    """``dest -> Setting`` for each key of the YAML mapping in ``path``, checked
    against ``parser``'s options; ``UsageError`` (one line: file and line) if not."""
    import yaml

    data = read_file(path, "config file")
    keys = config_keys(parser)
    loader = yaml.SafeLoader(data)
    try:
        root = loader.get_single_node()
        if root is None:  # empty, or only comments: no options
            return {}
        if not isinstance(root, yaml.MappingNode):
            raise UsageError(f"{path}:{root.start_mark.line + 1}: a config file must be a "
                             "mapping of option names to values (block_size: 256)")
        explicit = {id(key) for key, _ in root.value if key.tag != _MERGE_TAG}
        loader.flatten_mapping(root)  # YAML merge keys (<<: *defaults)
        settings: dict[str, Setting] = {}
        explicit_dests: dict[str, int] = {}
        for key_node, value_node in root.value:
            line = key_node.start_mark.line + 1
            where = f"{path}:{line}"
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                raise UsageError(f"{where}: keys must be option names, got "
                                 f"{_shown_node(key_node, loader)}")
            key = str(key_node.value)
            action = keys.get(_normal(key))
            if action is None:
                raise UsageError(f"{where}: {_unknown(key, keys)}")
            if id(key_node) in explicit:
                if action.dest in explicit_dests:
                    raise UsageError(f"{where}: {key!r} is set twice (first on line "
                                     f"{explicit_dests[action.dest]})")
                explicit_dests[action.dest] = line
            value = _checked(action, value_node, key, where, loader)
            # A merged mapping's keys give way to the file's own, as YAML says.
            settings[action.dest] = Setting(value, key, line)
        return settings
    except yaml.MarkedYAMLError as exc:
        raise UsageError(f"{path}{_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: invalid YAML: {_one_line(str(exc))}") from None
    finally:
        loader.dispose()


def parse_command_line(parser: argparse.ArgumentParser,
                       argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with the options of ``--config FILE`` merged in.

    The returned namespace also holds ``effective_config``: ``effective_options``
    of the subcommand that was parsed.
    """
    tokens = list(sys.argv[1:] if argv is None else argv)
    found = _subcommand(parser, tokens)
    args = None
    if found is not None:
        index, sub = found
        probed = _probe(sub, tokens[index + 1:])
        if probed is not None and probed[0] is not None:
            args = _parse_with_file(parser, sub, tokens, index, probed[0], probed[1])
    if args is None:
        args = parser.parse_args(tokens)
    sub_parser = getattr(args, "parser", None)
    if isinstance(sub_parser, argparse.ArgumentParser):
        args.effective_config = effective_options(args, sub_parser)
    return args


def effective_options(args: argparse.Namespace,
                      parser: argparse.ArgumentParser) -> dict[str, Any]:
    """``dest -> value`` of every option and positional argument of ``parser`` in
    ``args``: the run's options after merging file and command line, JSON-friendly.
    The internal entries (``run``, ``parser``, ``config``, ``help``) are left out."""
    options: dict[str, Any] = {}
    for action in parser._actions:
        dest = action.dest
        if (dest in (argparse.SUPPRESS, CONFIG_DEST, "run", "parser", "effective_config")
                or isinstance(action, argparse._HelpAction | argparse._VersionAction)
                or not hasattr(args, dest)):
            continue
        options[dest] = _plain(getattr(args, dest))
    return options


# --- the merge ---------------------------------------------------------------------------


def _subcommand(parser: argparse.ArgumentParser,
                tokens: list[str]) -> tuple[int, argparse.ArgumentParser] | None:
    """Where the subcommand is in ``tokens`` and its parser, if it takes ``--config``."""
    commands = next((a.choices for a in parser._actions
                     if isinstance(a, argparse._SubParsersAction)), None)
    if not isinstance(commands, dict):
        return None
    skip = False
    for index, token in enumerate(tokens):
        if skip:
            skip = False
            continue
        if token == "--":
            return None
        if token.startswith("-") and token != "-":
            # A main-parser option that takes a value (there is none today) skips it.
            action = parser._option_string_actions.get(token)
            skip = action is not None and action.nargs != 0
            continue
        sub = commands.get(token)
        if isinstance(sub, argparse.ArgumentParser) and any(
                a.dest == CONFIG_DEST for a in sub._actions):
            return index, sub
        return None
    return None


class _ProbeFailed(Exception):
    pass


class _Probe(argparse.ArgumentParser):
    """Parses errors away: the real parse reports them."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ProbeFailed(message)

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise _ProbeFailed(message)


def _probe(sub: argparse.ArgumentParser, rest: list[str]) -> tuple[str | None, int] | None:
    """(``--config``'s value, how many positional arguments ``rest`` gives), read with
    ``sub``'s options (none required) and no positional arguments; None if unreadable."""
    probe = _Probe(prog=sub.prog, add_help=False, allow_abbrev=sub.allow_abbrev,
                   prefix_chars=sub.prefix_chars)
    for action in sub._actions:
        if action.option_strings and not isinstance(
                action, argparse._HelpAction | argparse._VersionAction):
            clone = copy.copy(action)
            clone.required = False
            probe._add_action(clone)
    try:
        namespace, extras = probe.parse_known_args(rest)
    except _ProbeFailed:
        return None
    given = 0
    for position, token in enumerate(extras):
        if token == "--":
            given += len(extras) - position - 1
            break
        if probe._parse_optional(token) is None:
            given += 1
    config = getattr(namespace, CONFIG_DEST, None)
    return (config if isinstance(config, str) else None), given


def _parse_with_file(parser: argparse.ArgumentParser, sub: argparse.ArgumentParser,
                     tokens: list[str], index: int, path: str,
                     given: int) -> argparse.Namespace:
    settings = load_config(path, sub)
    positionals = [a for a in sub._actions if not a.option_strings]
    appended: list[str] = []
    for position, action in enumerate(positionals):
        if position < given:
            continue  # the command line's own
        setting = settings.get(action.dest)
        if setting is None:
            later = next((settings[a.dest] for a in positionals[position + 1:]
                          if a.dest in settings), None)
            if later is not None:
                raise UsageError(
                    f"{path}:{later.line}: {later.key!r} needs {action.dest!r} too: positional "
                    "arguments fill from the first, on the command line and then in the file")
            break
        values = setting.value if isinstance(setting.value, list) else [setting.value]
        for value in values:
            text = str(value)
            if text[:1] in sub.prefix_chars:
                raise UsageError(f"{path}:{setting.line}: {setting.key!r} must not start "
                                 f"with {text[0]!r}, got {text!r}")
            appended.append(text)
    defaults = {dest: s.value for dest, s in settings.items()
                if any(a.dest == dest and a.option_strings for a in sub._actions)}
    saved = {dest: sub.get_default(dest) for dest in defaults}
    relaxed = [a for a in sub._actions
               if a.option_strings and a.required and a.dest in defaults]
    sub.set_defaults(**defaults)
    for action in relaxed:
        action.required = False
    try:
        return parser.parse_args([*tokens, *appended])
    finally:
        # The parser is left as built: its defaults stay the documented ones
        # (watch compares options with them), its required options required.
        sub.set_defaults(**saved)
        for action in relaxed:
            action.required = True


# --- checking one value ----------------------------------------------------------------


def _checked(action: argparse.Action, node: Any, key: str, where: str, loader: Any) -> Any:
    import yaml

    if isinstance(action, _FLAGS):
        value = loader.construct_object(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, bool):
            raise UsageError(f"{where}: {key!r} must be true or false, got "
                             f"{_shown_node(node, loader)}")
        return action.const if value else action.default
    many = action.nargs not in (None, argparse.OPTIONAL)
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        if action.default is None and not action.required and not many:
            return None
        raise UsageError(f"{where}: {key!r} must be {_expected(action)}, got null")
    if not many:
        if not isinstance(node, yaml.ScalarNode):
            raise UsageError(f"{where}: {key!r} must be {_expected(action)}, got "
                             f"{_shown_node(node, loader)}")
        return _one(action, loader.construct_object(node), key, where)
    if not isinstance(node, yaml.SequenceNode) or not all(
            isinstance(item, yaml.ScalarNode) for item in node.value):
        raise UsageError(f"{where}: {key!r} must be a list of {_expected(action, plural=True)}, "
                         f"got {_shown_node(node, loader)}")
    items = [_one(action, loader.construct_object(item), key, where) for item in node.value]
    count = action.nargs
    if (count == argparse.ONE_OR_MORE and not items) or (
            isinstance(count, int) and len(items) != count):
        wanted = "at least one" if count == argparse.ONE_OR_MORE else str(count)
        raise UsageError(f"{where}: {key!r} must have {wanted} item(s), got {len(items)}")
    return items


def _one(action: argparse.Action, value: Any, key: str, where: str) -> Any:
    kind = action.type
    wrong = UsageError(f"{where}: {key!r} must be {_expected(action)}, got {_shown(value)}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong
        value = float(value)
    elif kind is None or kind is str:
        if not isinstance(value, str):
            raise wrong
    elif callable(kind):
        if isinstance(value, bool | dict | list) or value is None:
            raise wrong
        try:
            value = kind(value if isinstance(value, str) else str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise UsageError(
                f"{where}: {key!r} got {_shown(value)}: {_one_line(str(exc))}") from None
    if action.choices is not None and value not in action.choices:
        raise UsageError(f"{where}: {key!r} must be one of "
                         f"{', '.join(map(str, action.choices))}, got {_shown(value)}")
    return value


def _expected(action: argparse.Action, plural: bool = False) -> str:
    if action.choices is not None:
        return "one of " + ", ".join(map(str, action.choices))
    kind = action.type
    if kind is int:
        return "integers" if plural else "an integer"
    if kind is float:
        return "numbers" if plural else "a number"
    if kind is None or kind is str:
        return "strings" if plural else "a string"
    return "values" if plural else "a value"


def _unknown(key: str, keys: dict[str, argparse.Action]) -> str:
    if _normal(key) == CONFIG_DEST:
        return f"{key!r} cannot be set in a config file (pass --config on the command line)"
    close = difflib.get_close_matches(_normal(key), list(keys), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}"


def _normal(key: str) -> str:
    return key.replace("-", "_")


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)
