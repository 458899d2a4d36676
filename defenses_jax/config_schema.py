"""How a config is declared, and what derives from a declaration.

A declaration is a tree of sections whose leaves are `Key`s (a default, what a value may be, a
one-line description) and `FreeForm` sub-dicts (whose keys are someone else's: a model's keyword
arguments, the attacks by their key). From it derive `defaults` (config.base_config),
`problems` (every value it may not have, key missing or unknown, worded after the key's path:
config_checks.check_config), `filled` (a config saved by an earlier version with the keys added
since at their defaults: config.upgrade), `entry_values` (an entry of a free-form section read
against its declaration: threat_models.parse_attack_specs) and `reference` (docs/config.md).
The declaration of an experiment config is config.SCHEMA; this module knows none of its keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from typing import Any, Optional, Union

import ml_collections

from defenses_jax.value_checks import Check

_TYPE_WORDS = {str: "text", bool: "True or False", int: "an integer", float: "a number",
               tuple: "a tuple"}


def _is_a(kind: type, value: Any) -> bool:
  """Whether `value` is of the key's type as a config holds it (an int where a float goes, a
  list where a tuple goes: JSON has no tuples; never a bool for a number)."""
  if kind is bool:
    return isinstance(value, bool)
  if isinstance(value, bool):
    return False
  if kind is int:
    return isinstance(value, int)
  if kind is float:
    return isinstance(value, numbers.Real)
  if kind is tuple:
    return isinstance(value, (tuple, list))
  return isinstance(value, kind)


def _is_mapping(value: Any) -> bool:
  return isinstance(value, (dict, ml_collections.ConfigDict))


@dataclasses.dataclass(frozen=True)
class Key:
  """One key: its default, whose type is the key's type (as ml_collections types a field by its
  first value; `type` where the default is None), what its values may be (`check`; None: any
  value of its type) and what it is for. `checked_in`: where it is checked instead, when what
  it may be depends on more than the config (a detector's own threshold rule); `problems`
  leaves it to that place."""
  default: Any
  check: Optional[Check]
  doc: str
  type: Optional[type] = None
  checked_in: str = ""

  @property
  def kind(self) -> type:
    return self.type or type(self.default)

  def describe(self) -> str:
    if self.check is not None:
      return self.check.describe()
    return _TYPE_WORDS[self.kind] + (" or None" if self.default is None else "")

  def problem_in(self, value: Any, config=None) -> Optional[str]:
    """What is wrong with `value` for this key of `config` (the words after its path)."""
    if not (_is_a(self.kind, value) or value is None and self.default is None):
      return f"must be {self.describe()}; got {value!r}"
    return None if self.check is None else self.check.problem_in(value, config)


@dataclasses.dataclass(frozen=True)
class FreeForm:
  """A sub-dict whose keys are not the config's own. `entry`: what each value must be (a Check,
  or a Section declaring the fields of each entry), None: anything; `checked_in`: where the
  entries are checked, if not with the rest of the config; `optional`: None (the default) is
  allowed in place of a dict."""
  doc: str
  entry: Union[Check, "Section", None] = None
  checked_in: str = ""
  optional: bool = False

  @property
  def default(self):
    return None if self.optional else {}

  def describe(self) -> str:
    if isinstance(self.entry, Section):
      what = "entries of declared fields"
    elif self.entry is not None:
      what = "each " + self.entry.describe()
    else:
      what = "any keys"
    where = f"; checked by {self.checked_in}" if self.checked_in else ""
    return f"a dict ({what}{where})" + (" or None" if self.optional else "")

  def problems_in(self, path: str, value: Any, config) -> list[str]:
    if value is None and self.optional:
      return []
    if not _is_mapping(value):
      return [f"{path} must be {self.describe()}; got {value!r}"]
    if self.checked_in or not isinstance(self.entry, Check):
      return []
    found = []
    for name, item in value.items():
      problem = self.entry.problem_in(item, config)
      if problem:
        found.append(f"{path}.{name} {problem}")
    return found


@dataclasses.dataclass(frozen=True)
class Section:
  """Keys, free-form sub-dicts and sections by name, in the order the docs list them."""
  doc: str
  keys: dict


def section(doc: str, **keys) -> Section:
  return Section(doc, keys)


@dataclasses.dataclass(frozen=True)
class KeyOf(Check):
  """'' (none) or a key of the free-form section at `path` (eval.monitor.attack: an attack of
  eval.attacks)."""
  path: str

  def problem(self, value: Any) -> Optional[str]:
    return None

  def problem_in(self, value: Any, config) -> Optional[str]:
    keys = _keys_at(config, self.path)
    if value and keys is not None and value not in keys:
      return f"{value!r} is not one of {self.path} ({sorted(keys)})"
    return None

  def describe(self) -> str:
    return f"'' (none) or a key of {self.path}"


@dataclasses.dataclass(frozen=True)
class KeysOf(Check):
  """One or more keys of the free-form section at `path`, naming its `what`."""
  path: str
  what: str

  def problem(self, value: Any) -> Optional[str]:
    return None

  def problem_in(self, value: Any, config) -> Optional[str]:
    keys = _keys_at(config, self.path)
    if keys is None:
      return None
    if (not isinstance(value, (tuple, list)) or not value
        or any(not isinstance(v, str) or v not in keys for v in value)):
      shown = list(value) if isinstance(value, (tuple, list)) else value
      return f"must name {self.what} of {self.path} ({sorted(keys)}); got {shown!r}"
    return None

  def describe(self) -> str:
    return f"a tuple naming {self.what} of {self.path} (at least one)"


def _keys_at(config, path: str) -> Optional[set]:
  for part in path.split("."):
    if not _is_mapping(config) or part not in config:
      return None  # Reported as missing where it should be.
    config = config[part]
  return set(config.keys()) if _is_mapping(config) else None


def _default(item):
  if isinstance(item, Section):
    return _filled(item, {})
  return item.default


def defaults(schema: Section) -> dict:
  """Every key of `schema` at its default, as nested dicts."""
  return _filled(schema, {})


def _filled(section_: Section, values) -> dict:
  out = dict(values)
  for name, item in section_.keys.items():
    if name not in out:
      out[name] = _default(item)
    elif isinstance(item, Section) and _is_mapping(out[name]):
      out[name] = _filled(item, out[name])
  return out


def filled(schema: Section, config):
  """`config` (a ConfigDict, or the dict of a config.json) with every key of `schema` it lacks
  set to its default; keys it has are kept as they are, unknown ones too (`problems` names
  them). A new config of the kind given; the one given is not changed."""
  if isinstance(config, ml_collections.ConfigDict):
    return ml_collections.ConfigDict(_filled(schema, config.to_dict()))
  return _filled(schema, config)


def problems(schema: Section, config) -> list[str]:
  """One sentence per problem of `config` against `schema`, each starting with the key's path:
  values it may not have, keys missing (a config saved by an earlier version that was not
  upgraded) or unknown (a misspelt key set from Python)."""
  return _problems(schema, config, "", config)


def _problems(section_: Section, values, prefix: str, root) -> list[str]:
  found = []
  for name in sorted(set(values.keys()) - set(section_.keys)):
    close = difflib.get_close_matches(name, list(section_.keys), n=1)
    found.append(f"{prefix}{name} is not a config key" +
                 (f" (did you mean {prefix}{close[0]}?)" if close else ""))
  for name, item in section_.keys.items():
    path = prefix + name
    if name not in values:
      found.append(f"{path} is missing (a config saved by an earlier version: read it with "
                   "defenses_jax.config.upgrade)")
    elif isinstance(item, Section):
      if _is_mapping(values[name]):
        found += _problems(item, values[name], path + ".", root)
      else:
        found.append(f"{path} must be a section of keys; got {values[name]!r}")
    elif isinstance(item, FreeForm):
      found += item.problems_in(path, values[name], root)
    elif not item.checked_in:
      problem = item.problem_in(values[name], root)
      if problem:
        found.append(f"{path} {problem}")
  return found


def entry_values(schema: Section, entry) -> tuple[dict, list[str]]:
  """One entry of a free-form section read against its declaration (`schema`: its fields): every
  declared field (the entry's value or the default) and one sentence per problem (unknown
  fields, values out of range), each starting with the field's name."""
  entry = dict(entry)
  unknown = sorted(set(entry) - set(schema.keys))
  found = [f"unknown fields {unknown}; an entry takes {list(schema.keys)}"] if unknown else []
  values = _filled(schema, {k: v for k, v in entry.items() if k in schema.keys})
  return values, found + _problems(schema, values, "", None)


def paths(schema: Section, prefix: str = "") -> list[str]:
  """The path of every key and free-form sub-dict of `schema` (the sections' keys, not the
  sections)."""
  out = []
  for name, item in schema.keys.items():
    if isinstance(item, Section):
      out += paths(item, prefix + name + ".")
    else:
      out.append(prefix + name)
  return out


def lookup(schema: Section, path: str) -> Union[Key, FreeForm, Section]:
  """The declaration at `path` ('eval.detection.false_positive_rate')."""
  item = schema
  for part in path.split("."):
    item = item.keys[part]
  return item


def reference(schema: Section, title: str, intro: str, entries: dict) -> str:
  """Markdown: one table per section (default, what a value may be, what it is for), then one
  per declared entry of a free-form section (`entries`: {heading: Section})."""
  out = [f"# {title}", "", intro, ""]

  def table(section_: Section, prefix: str, heading: str) -> None:
    rows = [(prefix + name, item) for name, item in section_.keys.items()
            if not isinstance(item, Section)]
    out.extend([f"## {heading}", "", section_.doc, "",
                "| key | default | allowed | description |", "|---|---|---|---|"])
    for path, item in rows:
      allowed = item.describe() + (f"; checked by {item.checked_in}"
                                   if isinstance(item, Key) and item.checked_in else "")
      out.append(f"| `{path}` | `{item.default!r}` | {_cell(allowed)} | {_cell(item.doc)} |")
    out.append("")
    for name, item in section_.keys.items():
      if isinstance(item, Section):
        table(item, prefix + name + ".", f"`{prefix}{name}`")

  table(schema, "", "Top level")
  for heading, entry in entries.items():
    table(entry, "", heading)
  return "\n".join(out).rstrip() + "\n"


def _cell(text: str) -> str:
  return " ".join(text.split()).replace("|", "\\|")
