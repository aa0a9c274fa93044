"""A config's YAML text → plain Python values, as yaml.safe_load reads it (nothing in it runs code), less what a config
may not hold:

- a key written twice in one mapping: PyYAML keeps the last one silently, so an edit above a forgotten line is lost;
- an alias (`*name`): nine lines of aliases expand to a billion items (a "billion laughs"), which every reader of the
  value (pydantic, a message, the saved config.yaml) then walks; and an alias makes two places one object, so an
  override written into one lands in both. A config writes each value once and needs none;
- a merge key (`<<`), which exists to merge aliases and silently lets the mapping's own keys win over the merged ones;
- an integer beyond Python's 4300-digit conversion limit (int() raises ValueError, which is no YAMLError).
"""
from __future__ import annotations

import sys
from typing import Any, Optional

import yaml

from config.errors import ConfigError, cut, plain

MERGE_TAG = "tag:yaml.org,2002:merge"


class Refused(Exception):
    """What the text may not hold (`message`), and where (`mark`: PyYAML's position, None in a one-line value)."""

    def __init__(self, message: str, mark: Optional[yaml.Mark]):
        super().__init__(message)
        self.message, self.mark = message, mark


class ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases as it meets them (before anything is expanded) and over-long integers."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise Refused(f"the YAML alias *{plain(event.anchor, 40)} is not accepted in a config; write the value "
                          f"out where it is used", event.start_mark)
        return super().compose_node(parent, index)

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
            raise Refused(f"the integer {cut(node.value, 20)} has {len(node.value)} characters, more than Python "
                          f"reads ({sys.get_int_max_str_digits()} digits); write a smaller number",
                          node.start_mark) from None


ConfigLoader.add_constructor("tag:yaml.org,2002:int", ConfigLoader.construct_yaml_int)


def read_yaml(text: str, where: str, prefix: str = "") -> Any:
    """`text` as YAML, or a ConfigError naming `where` (a file, or `--set ITEM` with `prefix` the key it sets, whose
    value is one line: its messages give no line number)."""
    loader = ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:  # empty, only comments
            return None
        duplicate = first_duplicate_key(loader, node, prefix)
        if duplicate:
            raise duplicate
        return loader.construct_document(node)
    except Refused as err:
        at = f" line {err.mark.line + 1}" if err.mark is not None and not prefix else ""
        raise ConfigError(f"{where}{at}: {err.message}") from None
    except (yaml.YAMLError, RecursionError) as err:  # RecursionError: nesting deeper than Python's stack
        mark = getattr(err, "problem_mark", None)
        problem = (f"{err.problem} (line {mark.line + 1}, column {mark.column + 1})"
                   if getattr(err, "problem", None) and mark is not None else " ".join(str(err).split()))
        raise ConfigError(f"{where}: {'the value is ' if prefix else ''}not valid YAML: {problem}") from err
    finally:
        loader.dispose()


def first_duplicate_key(loader: ConfigLoader, root: yaml.Node, prefix: str) -> Optional[Refused]:
    """The first key, in the file's order, that its mapping already holds (or a merge key), as a Refused; None if none.
    Keys are compared as the constructed dict compares them (1, 1.0 and true are one key). Without aliases the nodes
    form a tree, walked once."""
    found = []
    stack = [(root, prefix)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.SequenceNode):
            stack += [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        if not isinstance(node, yaml.MappingNode):
            continue
        first: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                found.append(Refused("the YAML merge key << is not accepted in a config; write the keys out",
                                     key_node.start_mark))
                continue
            if not isinstance(key_node, yaml.ScalarNode):  # a list or mapping as a key: safe_load refuses it
                stack.append((value_node, path))
                continue
            key = loader.construct_object(key_node)
            name = f"{path}.{plain(key, 40)}" if path else plain(key, 40)
            stack.append((value_node, name))
            try:
                seen = first.get(key)
            except TypeError:  # unhashable: the constructor refuses it
                continue
            if seen is None:
                first[key] = key_node.start_mark
            else:
                line = "" if prefix else f" (first at line {seen.line + 1})"
                found.append(Refused(f"key {name} appears twice{line}; keep one", key_node.start_mark))
    return min(found, key=lambda r: (r.mark.line, r.mark.column), default=None)
