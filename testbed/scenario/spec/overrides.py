"""`--set a.b.c=value` overrides: applied to the YAML data before parsing, so an error in an
overridden value names the field and says it came from --set."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import yaml

from testbed.config.yamlfile import Document, KeyPath, Refused, Yaml, dotted, load_value
from testbed.errors import ConfigError, UserError
from testbed.scenario.spec.model import MAX_SET_DEPTH, cut


@dataclass(frozen=True)
class _Overridden(Document):
    overridden: frozenset[KeyPath] = frozenset()

    def error(self, keypath: KeyPath, message: str) -> ConfigError:
        if any(keypath[: len(o)] == o for o in self.overridden):
            message += " (value from --set)"
        return super().error(keypath, message)


_INDEX_RE = re.compile(r"^[0-9]{1,9}\Z")




def _set_path(data: Yaml, path: str, value: Yaml) -> KeyPath:
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise UserError(f"--set {path}=...: a dotted path such as repetitions or workloads.matmul.arrival.rate")
    if len(parts) > MAX_SET_DEPTH:
        raise UserError(f"--set {cut(path)}: more than {MAX_SET_DEPTH} parts")
    node = data
    kp: list[str | int] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:  # a missing mapping is created
                    node[part] = {}
                node = node[part]
            kp.append(part)
        elif isinstance(node, list):
            # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
            if _INDEX_RE.match(part) and int(part) < len(node):
                idx = int(part)
            else:
                named = [j for j, item in enumerate(node) if isinstance(item, dict) and item.get("name") == part]
                if not named:
                    raise UserError(f"--set {cut(path)}: {dotted(tuple(kp))} has no item {cut(part)!r} "
                                    f"(an index below {len(node)} or an item's name)")
                idx = named[0]
            if last:
                node[idx] = value
            else:
                node = node[idx]
            kp.append(idx)
        else:
            raise UserError(f"--set {cut(path)}: {dotted(tuple(kp))} is a {type(node).__name__}, not a mapping or a list")
    return tuple(kp)


def apply_overrides(doc: Document, overrides: list[str]) -> Document:
    if not overrides:
        return doc
    data = copy.deepcopy(doc.data) if isinstance(doc.data, dict) else {}
    done: set[KeyPath] = set()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"--set {cut(item)!r}: expected KEY=VALUE")
        try:  # the file's loader and its bounds (aliases, depth, numbers, keys)
            value = load_value(text) if text.strip() else None
        except Refused as exc:
            raise UserError(f"--set {cut(key)}: {exc.message}") from None
        except yaml.MarkedYAMLError as exc:
            raise UserError(f"--set {cut(key)}: the value is not valid YAML: {exc.problem}") from None
        except yaml.reader.ReaderError as exc:
            raise UserError(f"--set {cut(key)}: the value is not valid YAML: {exc.reason}") from None
        except yaml.YAMLError as exc:
            raise UserError(f"--set {cut(key)}: the value is not valid YAML: {exc}") from None
        done.add(_set_path(data, key.strip(), value))
    return _Overridden(doc.path, data, doc.lines, doc.text, frozenset(done))
