"""A quick yes to "is this document valid under its schema?", so a valid document need not import
jsonschema (~0.04 s) or walk it with jsonschema's general machinery.

`is_valid` answers True only when the document is certainly valid under draft 2020-12 as
jsonschema applies it (the same type rules, the same equality for enum/const, re.search for
pattern, no format checks); it answers None whenever it is not sure: an invalid document, a
keyword or a $ref form it does not know, an unexpected value. Then jsonschema validates the
document and words the errors, as before. Only the keywords the project's schemas use are known.
"""

from __future__ import annotations

import numbers
import re
from typing import Any
from urllib.parse import unquote

# Keywords without effect on validity (annotations, and $defs, which holds schemas for $ref).
_ANNOTATIONS = frozenset({"$schema", "$comment", "$defs", "title", "description", "examples", "default",
                          "deprecated", "readOnly", "writeOnly"})
_KNOWN = frozenset({"type", "$ref", "properties", "additionalProperties", "required", "minProperties",
                    "propertyNames", "dependentRequired", "items", "minItems", "maxItems", "uniqueItems",
                    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
                    "pattern", "enum", "const", "not", "if", "then", "else", "allOf", "anyOf", "oneOf"}) | _ANNOTATIONS

_FILE_OF: dict[str, str] = {}    # "strategy.schema.json" -> "strategy"


def is_valid(kind: str, data: Any) -> bool | None:
    """True if `data` is certainly valid under `kind`'s schema; None if it is not known to be."""
    from . import schema

    if not _FILE_OF:
        _FILE_OF.update({f"{k}.schema.json": k for k in schema.KINDS})
    try:
        return True if _check(schema.load_schema(kind), data, kind) is True else None
    except Exception:  # anything unexpected (deep nesting, odd values, a malformed schema): jsonschema decides
        return None


def _split_ref(ref: Any, current: str) -> tuple[str, list[str]] | None:
    """(kind of the file, JSON pointer parts) of a $ref, None for a form not handled here."""
    if not isinstance(ref, str) or "#" not in ref:
        return None
    file, fragment = ref.split("#", 1)
    if file:
        kind = _FILE_OF.get(file)
        if kind is None:
            return None
    else:
        kind = current
    if fragment == "":
        return kind, []
    if not fragment.startswith("/"):
        return None  # an anchor
    parts = [unquote(p).replace("~1", "/").replace("~0", "~") for p in fragment[1:].split("/")]
    return kind, parts


_RESOLVED: dict[tuple[str, str], tuple[Any, str]] = {}


def _resolve(ref: str, current: str) -> tuple[Any, str]:
    key = (ref, current)
    hit = _RESOLVED.get(key)
    if hit is None:
        from . import schema

        kind, parts = _split_ref(ref, current)
        node = schema.load_schema(kind)
        for part in parts:
            node = node[int(part)] if isinstance(node, list) else node[part]
        hit = _RESOLVED[key] = (node, kind)
    return hit


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Number)


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


_TYPES = {
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "integer": _is_integer,
    "null": lambda v: v is None,
    "number": _is_number,
    "object": lambda v: isinstance(v, dict),
    "string": lambda v: isinstance(v, str),
}


def _equal(one: Any, two: Any) -> bool | None:
    """jsonschema's equality for scalars (True is not 1, 1 is 1.0); None for containers."""
    if one is two:
        return True
    if isinstance(one, str) or isinstance(two, str):
        return one == two
    if isinstance(one, (list, dict, tuple)) or isinstance(two, (list, dict, tuple)):
        return None
    if not all(v is None or isinstance(v, (bool, int, float)) for v in (one, two)):
        return None
    if isinstance(one, bool) or isinstance(two, bool):
        return isinstance(one, bool) and isinstance(two, bool) and one == two
    return one == two


def _all(results) -> bool | None:
    """Three-valued AND: False if any is False, else None if any is None, else True."""
    unsure = False
    for result in results:
        if result is False:
            return False
        if result is None:
            unsure = True
    return None if unsure else True


def _check(schema: Any, value: Any, current: str) -> bool | None:
    """True: valid; False: certainly invalid; None: not known."""
    if schema is True:
        return True
    if schema is False:
        return False
    if not isinstance(schema, dict) or not schema.keys() <= _KNOWN:
        return None  # a keyword not known here (or $id, $anchor...) may change what the others mean
    unsure = False
    for key, rule in schema.items():
        if key in _ANNOTATIONS:
            continue
        result = _KEYWORDS[key](rule, value, schema, current)
        if result is False:
            return False
        if result is None:
            unsure = True
    return None if unsure else True


def _type(rule, value, schema, current):
    types = rule if isinstance(rule, list) else [rule]
    return any(_TYPES[t](value) for t in types)  # (an unknown type name raises: not known)


def _ref(rule, value, schema, current):
    if _split_ref(rule, current) is None:
        return None
    target, kind = _resolve(rule, current)
    return _check(target, value, kind)


def _properties(rule, value, schema, current):
    if not isinstance(value, dict):
        return True
    return _all(_check(sub, value[name], current) for name, sub in rule.items() if name in value)


def _additional(rule, value, schema, current):
    if not isinstance(value, dict):
        return True
    known = schema.get("properties", {})
    extras = [k for k in value if k not in known]
    if rule is False:
        return not extras
    if rule is True or not extras:
        return True
    return _all(_check(rule, value[k], current) for k in extras)


def _required(rule, value, schema, current):
    if not isinstance(rule, list):
        return None
    return not isinstance(value, dict) or all(name in value for name in rule)


def _min_properties(rule, value, schema, current):
    return not isinstance(value, dict) or len(value) >= rule


def _property_names(rule, value, schema, current):
    if not isinstance(value, dict):
        return True
    return _all(_check(rule, name, current) for name in value)


def _dependent_required(rule, value, schema, current):
    if not isinstance(rule, dict) or not all(isinstance(deps, list) for deps in rule.values()):
        return None
    if not isinstance(value, dict):
        return True
    return all(each in value for name, deps in rule.items() if name in value for each in deps)


def _items(rule, value, schema, current):
    if not isinstance(value, list) or not value:
        return True
    if rule is False:
        return False
    return _all(_check(rule, item, current) for item in value)


def _min_items(rule, value, schema, current):
    return not isinstance(value, list) or len(value) >= rule


def _max_items(rule, value, schema, current):
    return not isinstance(value, list) or len(value) <= rule


def _unique_items(rule, value, schema, current):
    if not isinstance(rule, bool):
        return None
    if not rule or not isinstance(value, list):
        return True
    if all(isinstance(v, str) for v in value):
        return len(set(value)) == len(value)
    return None


def _minimum(rule, value, schema, current):
    return not _is_number(value) or not value < rule


def _maximum(rule, value, schema, current):
    return not _is_number(value) or not value > rule


def _exclusive_minimum(rule, value, schema, current):
    return not _is_number(value) or not value <= rule


def _exclusive_maximum(rule, value, schema, current):
    return not _is_number(value) or not value >= rule


def _min_length(rule, value, schema, current):
    return not isinstance(value, str) or len(value) >= rule


def _max_length(rule, value, schema, current):
    return not isinstance(value, str) or len(value) <= rule


def _pattern(rule, value, schema, current):
    if not isinstance(rule, str):
        return None
    return not isinstance(value, str) or re.search(rule, value) is not None


def _enum(rule, value, schema, current):
    if not isinstance(rule, list):
        return None
    results = [_equal(each, value) for each in rule]
    if any(r is True for r in results):
        return True
    return None if any(r is None for r in results) else False


def _const(rule, value, schema, current):
    return _equal(value, rule)


def _not(rule, value, schema, current):
    result = _check(rule, value, current)
    return None if result is None else not result


def _if(rule, value, schema, current):
    if "then" not in schema and "else" not in schema:
        return True
    result = _check(rule, value, current)
    if result is None:
        return None
    branch = schema.get("then" if result else "else")
    return True if branch is None else _check(branch, value, current)


def _branches_only(rule, value, schema, current):
    return True  # then / else: applied by `if`


def _all_of(rule, value, schema, current):
    if not isinstance(rule, list) or not rule:
        return None
    return _all(_check(sub, value, current) for sub in rule)


def _any_of(rule, value, schema, current):
    if not isinstance(rule, list) or not rule:
        return None
    unsure = False
    for sub in rule:
        result = _check(sub, value, current)
        if result is True:
            return True
        if result is None:
            unsure = True
    return None if unsure else False


def _one_of(rule, value, schema, current):
    if not isinstance(rule, list) or not rule:
        return None
    results = [_check(sub, value, current) for sub in rule]
    if any(r is None for r in results):
        return None
    return sum(1 for r in results if r) == 1


_KEYWORDS = {
    "type": _type, "$ref": _ref, "properties": _properties, "additionalProperties": _additional,
    "required": _required, "minProperties": _min_properties, "propertyNames": _property_names,
    "dependentRequired": _dependent_required, "items": _items, "minItems": _min_items, "maxItems": _max_items,
    "uniqueItems": _unique_items, "minimum": _minimum, "maximum": _maximum, "exclusiveMinimum": _exclusive_minimum,
    "exclusiveMaximum": _exclusive_maximum, "minLength": _min_length, "maxLength": _max_length,
    "pattern": _pattern, "enum": _enum, "const": _const, "not": _not, "if": _if, "then": _branches_only,
    "else": _branches_only, "allOf": _all_of, "anyOf": _any_of, "oneOf": _one_of,
}
