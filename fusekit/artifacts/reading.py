"""Reading the JSON, JSON-lines and YAML files that fusekit or a user wrote, each failure one line naming the file.

Recipes are untrusted text: YAML is read safely (no Python objects), refuses duplicate keys (which plain YAML
resolves silently to the last one), aliases that expand past `MAX_VALUES` values (a "billion laughs" bomb) and
files larger than `MAX_BYTES`.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from fusekit.config import from_mapping
from fusekit.errors import FusekitError

MAX_BYTES = 4 << 20  # a recipe or record larger than this is not one fusekit wrote or a person typed
MAX_VALUES = 100_000  # YAML values after expanding aliases


def read_text(path: Path, what: str = "file") -> str:
    """UTF-8 text of `path`; a missing file, a folder, unreadable or non-UTF-8 bytes are one-line errors."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise FusekitError(f"{what} {path} is larger than {MAX_BYTES >> 20} MB")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FusekitError(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise FusekitError(f"{what} {path} is a folder, expected a file") from None
    except OSError as error:
        raise FusekitError(f"cannot read {what} {path}: {error.strerror or error}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FusekitError(f"{what} {path} is not UTF-8 text (byte {raw[error.start]:#04x} at offset "
                           f"{error.start})") from None


def read_json(path: Path, what: str = "file", expect: type = dict):
    """A JSON file whose top level is `expect` (a mapping unless said otherwise)."""
    try:
        data = json.loads(read_text(path, what))
    except (json.JSONDecodeError, RecursionError) as error:
        raise FusekitError(f"{what} {path} is not valid JSON ({str(error)[:80]})") from None
    if not isinstance(data, expect):
        raise FusekitError(f"{what} {path} holds a JSON {type(data).__name__}, expected a "
                           f"{'mapping' if expect is dict else expect.__name__}")
    return data


def read_jsonl(path: Path, what: str = "log", strict: bool = False) -> list[dict]:
    """Every record of a JSON-lines file; any bad line is an error naming its line number, except, in a log fusekit
    appends to (not `strict`), a last line cut short by a kill, which is dropped. A user's input file is strict."""
    lines = read_text(path, what).splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not strict:  # an append interrupted mid-line
                break
            raise FusekitError(f"{what} {path}:{number} is not a JSON record") from None
        if not isinstance(record, dict):
            raise FusekitError(f"{what} {path}:{number} is a JSON {type(record).__name__}, expected a mapping")
        records.append(record)
    return records


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # unhashable: the base class names it
                    break
                if duplicate:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Values the node stands for once every alias is expanded (aliases share nodes, so memoised by identity)."""
    if id(node) not in memo:
        memo[id(node)] = 1  # a recursive alias counts once instead of looping
        children = node.value if isinstance(node.value, list) else []
        flat = [n for item in children for n in (item if isinstance(item, tuple) else (item,))]
        memo[id(node)] = min(1 + sum(_expanded_size(child, memo) for child in flat), MAX_VALUES + 1)
    return memo[id(node)]


def read_yaml(path: Path, what: str = "recipe"):
    """The YAML document in `path`, read with the checks above; an empty file is None."""
    text = read_text(path, what)
    loader = None
    try:
        loader = _StrictLoader(text)  # its reader already refuses control characters
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_VALUES:
            raise FusekitError(f"{what} {path} expands to more than {MAX_VALUES:,} values (YAML aliases?)")
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        where = f":{error.problem_mark.line + 1}" if error.problem_mark else ""
        raise FusekitError(f"{what} {path}{where} is not valid YAML: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise FusekitError(f"{what} {path} is not valid YAML: {' '.join(str(error).split())[:160]}") from None
    except RecursionError:
        raise FusekitError(f"{what} {path} is nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_recipe(path: Path, cls: type):
    """A YAML recipe validated into config dataclass `cls` (unknown keys, wrong types and values out of range are
    one-line errors naming the file and key)."""
    return from_mapping(cls, read_yaml(path) or {}, str(path))
