"""JSON Schema validation of documents, with every error placed at its line and column.

The schemas (draft 2020-12) live in the project's schemas/ folder and ship inside the package as
`engine.schemas`. jsonschema's raw messages are rewritten for a trader: an unknown key says
which key and what it might have meant, an enum lists the allowed values, a oneOf reports the
branch that fits the value's type instead of "is not valid under any of the given schemas".
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from pathlib import Path
from typing import Any, Iterable

from ..diagnostics import Diagnostic, error
from . import quickcheck
from .yamlsource import SourceMap

KINDS = ("strategy", "universe", "instruments", "scanner", "risk")


def schema_dir() -> Path:
    """Where the schema files are: engine/schemas/ in an installed package (pyproject maps the
    project's schemas/ there), else the source tree's schemas/."""
    engine_dir = Path(__file__).resolve().parents[1]
    installed = engine_dir / "schemas"
    return installed if (installed / "strategy.schema.json").is_file() else engine_dir.parent / "schemas"


@functools.lru_cache(maxsize=None)
def schema_text(kind: str) -> str:
    return (schema_dir() / f"{kind}.schema.json").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def load_schema(kind: str) -> dict:
    return json.loads(schema_text(kind))


@functools.lru_cache(maxsize=None)
def _validator(kind: str):
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    resources = [(f"{k}.schema.json", Resource(load_schema(k), DRAFT202012)) for k in KINDS]
    registry = Registry().with_resources(resources)
    return Draft202012Validator(load_schema(kind), registry=registry)


_TYPE_WORDS = {"string": "a string", "number": "a number", "integer": "a whole number", "boolean": "true or false",
               "object": "a mapping (key: value)", "array": "a list", "null": "nothing (null)"}


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _fits_type(value: Any, schema_type) -> bool:
    types = schema_type if isinstance(schema_type, list) else [schema_type]
    actual = _type_of(value)
    return actual in types or (actual == "integer" and "number" in types) or (
        actual == "number" and "integer" in types and float(value).is_integer())


def _got(value: Any) -> str:
    """'got a string "x"', or 'got nothing' for an empty value."""
    if value is None:
        return "got nothing (an empty value)"
    return f"got {_type_of(value)} {_show(value)}"


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _path_text(path: Iterable) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the document"


def _example_hint(schema: dict) -> str:
    examples = schema.get("examples")
    if examples:
        shown = ", ".join(json.dumps(e) if not isinstance(e, str) else e for e in examples[:3])
        return f"e.g. {shown}"
    return ""


class _Reporter:
    def __init__(self, path: str, marks: SourceMap):
        self.path = path
        self.marks = marks
        self.out: list[Diagnostic] = []
        self._seen: set[tuple] = set()

    def at_value(self, where, message: str, hint: str = "") -> None:
        mark = self.marks.value(where)
        self._emit(mark.line if mark else 1, mark.col if mark else 1, message, hint)

    def at_key(self, where, message: str, hint: str = "") -> None:
        mark = self.marks.key(where) if where else self.marks.value(where)
        self._emit(mark.line if mark else 1, mark.col if mark else 1, message, hint)

    def _emit(self, line: int, col: int, message: str, hint: str) -> None:
        key = (line, col, message)
        if key not in self._seen:
            self._seen.add(key)
            self.out.append(error(self.path, line, col, message, hint))


def _leaf_errors(err) -> list:
    """Replace a oneOf/anyOf failure by the errors of the branch meant for this value."""
    if err.validator not in ("oneOf", "anyOf") or not err.context:
        return [err]
    branches: dict[int, list] = {}
    for sub in err.context:
        branches.setdefault(sub.schema_path[0], []).append(sub)
    schemas = err.validator_value

    def type_matches(index: int) -> bool:
        branch = schemas[index]
        if "type" in branch:
            return _fits_type(err.instance, branch["type"])
        if "$ref" in branch or "properties" in branch or "required" in branch:
            if "properties" in branch or "required" in branch:
                return isinstance(err.instance, dict)
        return not any(e.validator == "type" and not e.relative_path for e in branches.get(index, []))

    candidates = [i for i in branches if type_matches(i)]
    if not candidates:
        return [err]  # no branch of the right type: reported as a type error by the caller
    # each form is one required key, and none is there ({} or a misspelt key): one of them is asked for
    wanted = [schemas[i]["required"][0] for i in candidates
              if len(schemas[i].get("required", ())) == 1 and
              all(e.validator == "required" and not e.relative_path for e in branches[i])]
    if len(candidates) > 1 and len(wanted) == len(candidates):
        err.one_of_keys = wanted
        return [err]
    # The branch with the fewest, deepest errors is the one the user meant.
    best = min(candidates, key=lambda i: (len(branches[i]), -max(len(e.absolute_path) for e in branches[i])))
    out: list = []
    for sub in branches[best]:
        out.extend(_leaf_errors(sub))
    return out


def _expected_types(err) -> str:
    kinds = []
    for branch in err.validator_value:
        t = branch.get("type")
        if t is None and ("properties" in branch or "required" in branch):
            t = "object"
        if isinstance(t, list):
            kinds.extend(t)
        elif t:
            kinds.append(t)
        elif "enum" in branch:
            kinds.append("string")
        elif "$ref" in branch:
            kinds.append(branch["$ref"].rsplit("/", 1)[-1].replace("_", " "))
    words = []
    for k in kinds:
        word = _TYPE_WORDS.get(k, k)
        if word not in words:
            words.append(word)
    return " or ".join(words) if words else "another form"


def _report(rep: _Reporter, err) -> None:
    where = tuple(err.absolute_path)
    v, schema, value = err.validator, err.schema, err.instance
    if v in ("oneOf", "anyOf"):
        if getattr(err, "one_of_keys", None):
            props = schema.get("properties", {})
            forms = [json.dumps({k: props[k]["examples"][0]}) for k in err.one_of_keys if props.get(k, {}).get("examples")]
            rep.at_key(where, f"{_path_text(where)} needs one of {', '.join(err.one_of_keys)}",
                       f"e.g. {' or '.join(forms)}" if forms else "")
            return
        if err.context:
            hint = schema.get("description", "")
            rep.at_value(where, f"{_path_text(where)}: expected {_expected_types(err)}, "
                         f"{_got(value)}", hint.split(". ")[0] if hint else "")
        else:  # valid under more than one branch
            fields = [b["required"][0] for b in err.validator_value if len(b.get("required", ())) == 1]
            if fields:
                rep.at_value(where, f"give exactly one of {', '.join(fields)}",
                             f"this entry has {', '.join(f for f in fields if f in value)}")
            else:
                rep.at_value(where, f"{_path_text(where)} matches more than one form", _example_hint(schema))
        return
    if v == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extras = [k for k in value if k not in schema.get("properties", {})
                  and not any(re.search(p, str(k)) for p in schema.get("patternProperties", {}))]
        for key in extras:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            suggestion = f" (did you mean '{close[0]}'?)" if close else ""
            where_text = "at the top level" if not where else f"in {_path_text(where)}"
            rep.at_key(where + (key,), f"unknown key '{key}' {where_text}{suggestion}",
                       f"allowed keys: {', '.join(allowed)}" if allowed else "no keys are allowed here")
        return
    if v == "propertyNames":
        rep.at_key(where + (value,), f"'{value}' is not a valid name here",
                   schema.get("propertyNames", {}).get("description", "names are letters, digits and _, "
                                                                      "starting with a letter or _"))
        return
    if v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else str(err.validator_value)
        prop = schema.get("properties", {}).get(missing, {})
        hint = prop.get("description", "")
        example = _example_hint(prop)
        hint = (hint.split(". ")[0].rstrip(".") + (f"; {example}" if example else "")) if hint else example
        rep.at_key(where, f"missing required key '{missing}'" + (f" in {_path_text(where)}" if where else ""), hint)
        return
    if v == "enum":
        allowed = [str(x) for x in err.validator_value]
        close = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.5)
        suggestion = f" (did you mean '{close[0]}'?)" if close else ""
        rep.at_value(where, f"{_path_text(where)}: {_show(value)} is not allowed{suggestion}",
                     f"allowed values: {', '.join(allowed)}")
        return
    if v == "const":
        rep.at_value(where, f"{_path_text(where)} must be {_show(err.validator_value)}, got {_show(value)}")
        return
    if v == "type":
        expected = err.validator_value
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in (expected if isinstance(expected, list) else [expected]))
        rep.at_value(where, f"{_path_text(where)}: expected {words}, {_got(value)}",
                     _example_hint(schema))
        return
    if v == "pattern":
        hint = _example_hint(schema) or schema.get("description", "")
        if isinstance(value, str) and str(err.validator_value).endswith("%$") and \
                re.fullmatch(r"\s*[-+]?\d+(\.\d*)?\s*%\s*", value):
            # a percentage out of range, not a malformed one: say the range, as for a fraction
            top = "100%" if re.fullmatch(str(err.validator_value), "100%") else "under 100%"
            rep.at_value(where, f"{_path_text(where)} must be from 0% to {top}, got {_show(value)}",
                         f"a share: a percentage from 0% to {top} (\"25%\") or the fraction it is (0.25)")
            return
        if not hint and str(err.validator_value).endswith("%$"):
            hint = "a share: a percentage (\"25%\") or the fraction it is (0.25)"
        rep.at_value(where, f"{_path_text(where)}: {_show(value)} is not in the expected format", hint)
        return
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if v in bounds:
        hint = schema.get("description", "").split(". ")[0]
        if v == "maximum" and err.validator_value == 1 and isinstance(value, (int, float)) and 2 <= value <= 100:
            # a share written as a percentage without its sign: 100 meant 100%
            hint = f"a share is a fraction (0.25) or a percentage with its sign: for {value:g} percent write {value:g}%"
        rep.at_value(where, f"{_path_text(where)} must be {bounds[v]} {err.validator_value}, got {_show(value)}",
                     hint)
        return
    if v in ("minItems", "maxItems"):
        n = err.validator_value
        word = "at least" if v == "minItems" else "at most"
        rep.at_value(where, f"{_path_text(where)} needs {word} {n} item{'s' * (n != 1)}, got {len(value)}",
                     _example_hint(schema))
        return
    if v == "minProperties":
        rep.at_value(where, f"{_path_text(where)} must not be empty", _example_hint(schema))
        return
    if v == "uniqueItems":
        items = value if isinstance(value, list) else []
        twice = []
        for i, item in enumerate(items):
            if item in items[:i] and item not in twice:
                twice.append(item)
        named = ", ".join(_show(x) for x in twice)
        rep.at_value(where, f"{_path_text(where)} lists {named or 'an item'} more than once", "list each item once")
        return
    if v == "not":
        rep.at_value(where, f"{_path_text(where)}: this combination is not allowed",
                     schema.get("description", ""))
        return
    rep.at_value(where, f"{_path_text(where)}: {err.message}")


def validate(kind: str, data: Any, path: str, marks: SourceMap) -> list[Diagnostic]:
    """Every schema problem of one document, each at the line/column of the offending node."""
    if quickcheck.is_valid(kind, data):
        return []  # certainly valid: jsonschema (its import, its walk) is only needed to word errors
    rep = _Reporter(path, marks)
    errors = sorted(_validator(kind).iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    for err in errors:
        for leaf in _leaf_errors(err):
            _report(rep, leaf)
    return sorted(rep.out, key=lambda d: (d.line, d.col, d.message))
