"""YAML in and out for configs: YAML 1.2 scalars (only true/false are booleans, no timestamps, decimal / 0o / 0x
integers), duplicate keys refused, and a dumper that quotes what the loader would read as a number."""
from __future__ import annotations

import re

_LOADER = None


_YAML12_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_YAML12_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                           r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")


def _yaml12_int(loader, node) -> int:
    import yaml

    v = loader.construct_scalar(node)
    try:
        if v.startswith(("0o", "0x")):
            return int(v[2:], 8 if v[1] == "o" else 16)
        return int(v, 10)  # 010 is ten (YAML 1.1: eight)
    except ValueError as e:
        # past Python's limit on the digits of an integer's text (4300): its ValueError is no YAMLError, so it
        # named neither file, line nor field ("Exceeds the limit (4300 digits) for integer string conversion")
        raise yaml.constructor.ConstructorError(None, None, f"an integer of {len(v)} characters: {e}",
                                                node.start_mark) from None


def _no_duplicate_keys(loader, node, deep=False):
    import yaml

    seen = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: PyYAML's own construct_mapping reports it
            continue
        if first is not None:
            # the later one silently replaced the earlier, a whole section for a repeated `run:` (also in one
            # line's flow mapping, `{steps: 1, steps: 2}`)
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (first at line {first})",
                                                    key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


def yaml_load(text: str):
    """yaml.safe_load with YAML 1.2 scalars: only true/false are booleans, so `progress: off` or
    `--set run.progress=off` stay strings (YAML 1.1 would read on/off/yes/no as booleans); integers are decimal,
    0o octal or 0x hex (YAML 1.1 read 010 as 8 and 1:30 as 90); no timestamps: no field is a date, and
    `name: 2024-01-01` is a run name. A key repeated in one mapping is an error (PyYAML keeps the last)."""
    global _LOADER
    import yaml

    if _LOADER is None:
        class Loader(yaml.SafeLoader):
            pass

        dropped = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:int",
                   "tag:yaml.org,2002:float")
        Loader.yaml_implicit_resolvers = {
            k: [(tag, rx) for tag, rx in v if tag not in dropped]
            for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
        Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                     list("tTfF"))
        Loader.add_implicit_resolver("tag:yaml.org,2002:int", _YAML12_INT, list("-+0123456789"))
        Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))
        Loader.add_constructor("tag:yaml.org,2002:int", _yaml12_int)
        Loader.construct_mapping = _no_duplicate_keys
        _LOADER = Loader
    try:
        return yaml.load(text, Loader=_LOADER)
    except RecursionError:  # PyYAML's composer recurses per level: a few hundred nested [ ... ] reach the limit
        raise yaml.YAMLError("nested too deeply to parse (past Python's recursion limit)") from None


_DUMPER = None


def yaml_dump(data) -> str:
    """yaml.safe_dump for yaml_load: a string that YAML 1.2 reads as a number (a run named 1e-4 or 0o17, which
    YAML 1.1's rules write plain) is quoted, so that what fastgan writes reads back equal."""
    global _DUMPER
    import yaml

    if _DUMPER is None:
        class Dumper(yaml.SafeDumper):
            pass

        # the dumper quotes a string wherever an implicit resolver would read it as another type: add yaml_load's
        Dumper.add_implicit_resolver("tag:yaml.org,2002:int", _YAML12_INT, list("-+0123456789"))
        Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))
        _DUMPER = Dumper
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False)
