"""The one YAML reader of every input moesim loads (run configs, ``--set`` values, device
profiles, model specs).

Two differences from ``yaml.safe_load``:

* **Duplicate mapping keys are errors** (PyYAML keeps the last silently), reported with the
  line of the repeat and of the first occurrence;
* **YAML 1.2 floats**: PyYAML resolves YAML 1.1, where a float needs a dot and a signed
  exponent, so ``1e3``, ``2.4e1``, ``1.0e3`` and ``-.5`` would be *strings*. They are floats
  here, as in any YAML 1.2 reader. Values that overflow (``1e400``) load as ``inf``; the
  schema then rejects them as not finite.

Built on the C loader when PyYAML has it (same behaviour, faster).
"""
from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import ConstructorError

_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# YAML 1.2 core schema float. Appended after 1.1's resolvers, so ints and 1.1 floats resolve
# as before and only the forms 1.1 misses reach this one.
_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
                           |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)


class StrictLoader(_BASE):  # type: ignore[misc, valid-type]
    """SafeLoader that rejects duplicate keys and resolves YAML 1.2 floats."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _value in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue        # '<<' merges may be overridden by explicit keys
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:     # unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {key!r} (first at line {first.line + 1})",
                        key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12,
                                   list("-+0123456789."))


def load(stream) -> Any:
    """Parse one YAML document (str or file object) with :class:`StrictLoader`."""
    return yaml.load(stream, Loader=StrictLoader)  # noqa: S506 -- a SafeLoader subclass


def error_text(exc: yaml.YAMLError) -> str:
    """``invalid YAML (line L, column C): problem`` for a YAMLError."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}"
