"""The quick schema check (engine.config.quickcheck) against jsonschema itself.

quickcheck may only say "valid" (True) when jsonschema finds no error; validate() then skips
jsonschema. It is checked here on every example document and corpus case, on random mutations
of them, and on every $defs schema with values drawn from the documents and the schemas' own
examples: its True and its False must both agree with jsonschema (False matters under `not`,
`oneOf` and `if`), and it must not leave a valid example unrecognised (that would only cost time).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from engine.config import quickcheck, schema
from engine.config.yamlsource import load_yaml

ROOT = Path(__file__).resolve().parent.parent


def _registry() -> Registry:
    return Registry().with_resources(
        [(f"{k}.schema.json", Resource(schema.load_schema(k), DRAFT202012)) for k in schema.KINDS])


def _documents() -> list[tuple[str, dict]]:
    import test_corpus

    docs = []
    for path in sorted(ROOT.glob("**/*.yaml")):
        if ".git" in path.parts:
            continue
        data = load_yaml(str(path)).data
        if isinstance(data, dict) and data.get("kind") in schema.KINDS:
            docs.append((str(path.relative_to(ROOT)), data))
    for case in test_corpus.CASES:
        for name, text in case.files.items():
            if isinstance(text, bytes):
                continue
            try:
                data = load_yaml(name, text=text).data
            except Exception:
                continue
            if isinstance(data, dict) and data.get("kind") in schema.KINDS:
                docs.append((f"{case.id}:{name}", data))
    return docs


def _js_valid(kind: str, data) -> bool:
    return not any(True for _ in schema._validator(kind).iter_errors(data))


def _walk(value):
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _get(value, path):
    for key in path:
        value = value[key]
    return value


def test_documents_agree_with_jsonschema():
    docs = _documents()
    assert len(docs) > 50
    valid = 0
    for label, data in docs:
        kind = data["kind"]
        js = _js_valid(kind, data)
        quick = quickcheck.is_valid(kind, data)
        assert quick in (True, None), label
        assert js == (quick is True), label   # sound, and no valid document left to jsonschema
        valid += js
    assert valid > 10


SCALARS = [None, True, False, 0, 1, -1, 2.5, -0.5, 1.0, "", "x", "market", "buy", "1m", "09:30", "SPY",
           "sma(close, 5)", [], ["a"], [1], {}, {"a": 1}, "limit", 100, 0.0, "5%", "100%", "a b"]


def test_mutated_documents_agree_with_jsonschema():
    rng = random.Random(20240611)
    docs = _documents()
    counts = {"valid": 0, "invalid": 0}
    for _ in range(1500):
        label, data = rng.choice(docs)
        data = copy.deepcopy(data)
        for _ in range(rng.choice([1, 1, 2, 3])):
            paths = [p for p in _paths(data) if p]
            if not paths:
                break
            path = rng.choice(paths)
            parent = data
            for key in path[:-1]:
                parent = parent[key]
            key = path[-1]
            op = rng.random()
            if op < 0.35:
                parent[key] = copy.deepcopy(rng.choice(SCALARS))
            elif op < 0.5:
                del parent[key]
            elif op < 0.6 and isinstance(parent, dict):
                parent[rng.choice(["extra", "name", "when", "order", "type", "legs", "premium"])] = \
                    copy.deepcopy(rng.choice(SCALARS))
            elif op < 0.8:
                parent[key] = copy.deepcopy(rng.choice(list(_walk(data))))
            else:
                # a value from another document under the same key
                other = rng.choice(docs)[1]
                found = [_get(other, p) for p in _paths(other) if p and p[-1] == key] or list(_walk(other))
                parent[key] = copy.deepcopy(rng.choice(found))
        kind = data.get("kind") if data.get("kind") in schema.KINDS else "strategy"
        js = _js_valid(kind, data)
        quick = quickcheck.is_valid(kind, data)
        assert js == (quick is True), (label, data)
        counts["valid" if js else "invalid"] += 1
    assert counts["valid"] > 100 and counts["invalid"] > 100


def test_every_definition_agrees_with_jsonschema_both_ways():
    rng = random.Random(7)
    pool = [v for _, data in _documents() for v in _walk(data)]

    def collect(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "examples" and isinstance(value, list):
                    pool.extend(value)
                elif key in ("default", "const"):
                    pool.append(value)
                elif key == "enum" and isinstance(value, list):
                    pool.extend(value)
                else:
                    collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    names = set()
    for kind in schema.KINDS:
        collect(schema.load_schema(kind))
        names.update(k for node in _walk(schema.load_schema(kind)) if isinstance(node, dict)
                     for k in (node.get("properties") or {}) if isinstance(node.get("properties"), dict))
    names = sorted(names)
    dicts = [v for v in pool if isinstance(v, dict)] or [{}]

    def value(depth=0):
        r = rng.random()
        if r < 0.5 or depth > 2:
            return copy.deepcopy(rng.choice(pool))
        if r < 0.75:
            out = copy.deepcopy(rng.choice(dicts))
            for _ in range(rng.randint(0, 2)):
                if out and rng.random() < 0.4:
                    out.pop(rng.choice(list(out)))
                else:
                    out[rng.choice(names)] = value(depth + 1)
            return out
        return [value(depth + 1) for _ in range(rng.randint(0, 3))]

    registry = _registry()
    refs = [(k, f"{k}.schema.json#/$defs/{name}") for k in schema.KINDS
            for name in schema.load_schema(k).get("$defs", {})] + [(k, f"{k}.schema.json#") for k in schema.KINDS]
    validators = {ref: Draft202012Validator({"$ref": ref}, registry=registry) for _, ref in refs}
    quickcheck.is_valid("strategy", {})   # fills the file table
    seen = {True: 0, False: 0}
    for _ in range(6000):
        kind, ref = rng.choice(refs)
        v = value()
        quick = quickcheck._check({"$ref": ref}, v, kind)
        assert quick is not None and quick == validators[ref].is_valid(v), (ref, v)
        seen[quick] += 1
    assert seen[True] > 100 and seen[False] > 100


@pytest.mark.parametrize("schema_node, value, expected", [
    ({"enum": [1, "a"]}, True, False),           # True is not 1 for JSON Schema
    ({"enum": [1, "a"]}, 1.0, True),             # but 1.0 is 1
    ({"const": False}, 0, False),
    ({"type": "integer"}, 2.0, True),
    ({"type": "number"}, True, False),
    ({"uniqueItems": True}, ["a", "a"], False),
    ({"uniqueItems": True}, [1, True], None),    # left to jsonschema
    ({"patternProperties": {"^x": {}}, "additionalProperties": False}, {"xa": 1}, None),  # unknown keyword
    ({"not": {"type": "null"}}, None, False),
    ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, 1, False),
    ({"if": {"required": ["a"]}, "then": {"required": ["b"]}}, {"a": 1}, False),
    ({"if": {"required": ["a"]}, "then": {"required": ["b"]}}, {"c": 1}, True),
    ({"$ref": "#/nowhere"}, 1, None),
    ({"$ref": "other.json#/$defs/x"}, 1, None),
])
def test_keyword_semantics(schema_node, value, expected):
    quickcheck.is_valid("strategy", {})
    try:
        result = quickcheck._check(schema_node, value, "strategy")
    except Exception:
        result = None
    assert result == expected
    if expected is not None:
        assert Draft202012Validator(schema_node).is_valid(value) == expected


def test_validate_skips_jsonschema_only_for_valid_documents(monkeypatch):
    data = load_yaml(str(ROOT / "strategies" / "sma_crossover.yaml"))
    assert schema.validate("strategy", data.data, "s.yaml", data.marks) == []
    broken = copy.deepcopy(data.data)
    broken["data"]["bar"] = "7q"
    diags = schema.validate("strategy", broken, "s.yaml", data.marks)
    assert diags and all(d.is_error for d in diags)
    monkeypatch.setattr(quickcheck, "is_valid", lambda kind, data: None)   # always jsonschema
    assert schema.validate("strategy", broken, "s.yaml", data.marks) == diags
    assert schema.validate("strategy", data.data, "s.yaml", data.marks) == []
