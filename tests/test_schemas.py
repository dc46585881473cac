"""The JSON Schemas of the document kinds: well formed, documented, and true to the examples.

The example documents in strategies/ and universes/ are the design; every one must validate,
and a handful of broken variants must fail at the right place with the right keyword.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from engine.config.yamlsource import load_yaml as _load

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
KINDS = ["strategy", "universe", "instruments", "scanner", "risk"]
FILES = [f"{kind}.schema.json" for kind in KINDS]

EXAMPLES = {
    "universes/instruments.yaml": "instruments",
    "universes/megacaps.yaml": "universe",
    "universes/futures.yaml": "universe",
    "strategies/sma_crossover.yaml": "strategy",
    "strategies/iron_condor.yaml": "strategy",
    "strategies/breakout.yaml": "strategy",
    "strategies/composite_scanner.yaml": "strategy",
    "strategies/regime_agents.yaml": "strategy",
    "strategies/spxw_condor.yaml": "strategy",
    "strategies/futures_breakout.yaml": "strategy",
    "strategies/futures_breakout_es.yaml": "strategy",
    "strategies/scanners/composite.yaml": "scanner",
    "strategies/scanners/breakout_pro.yaml": "scanner",
    "strategies/risk/small_account.yaml": "risk",
}


def load_yaml(relpath: str):
    """Read an example with qtrade's own loader (YAML 1.2 scalars: `off` and `15:50` stay strings)."""
    return _load((ROOT / relpath).as_posix(), env={}).data


SCHEMA = {name: json.loads((SCHEMAS / name).read_text()) for name in FILES}
REGISTRY = Registry().with_resources(
    (name, Resource.from_contents(schema, default_specification=DRAFT202012))
    for name, schema in SCHEMA.items())


def validator_for(target: str) -> Draft202012Validator:
    """A validator for a whole file ("risk.schema.json") or a pointer into one
    ("risk.schema.json#/$defs/limits"), with cross-file refs resolved by bare file name."""
    return Draft202012Validator({"$ref": target}, registry=REGISTRY)


def errors(kind: str, doc) -> list:
    return list(validator_for(f"{kind}.schema.json").iter_errors(doc))


def describe(errs) -> str:
    return "\n".join(f"  at {'/'.join(map(str, e.absolute_path)) or '<root>'}: "
                     f"[{e.validator}] {e.message[:300]}" for e in errs)


def escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def walk(node, pointer=""):
    """Every (pointer, subschema) in a schema document."""
    if isinstance(node, dict):
        yield pointer, node
        for key, value in node.items():
            if key in ("examples", "default", "enum", "const"):
                continue  # data, not schemas
            yield from walk(value, f"{pointer}/{escape(key)}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{pointer}/{i}")


def object_definitions(schema):
    """Schemas that define an object's fields. Discriminator clauses (inside if/oneOf, e.g.
    {"required": ["type"], "properties": {"type": {"enum": [...]}}}) carry no "type" and are not
    definitions, so they are skipped."""
    for pointer, node in walk(schema):
        if isinstance(node.get("properties"), dict) and node.get("type") == "object":
            yield pointer, node


# ---- 1. the schemas are valid draft 2020-12 schemas ---------------------------------------------

@pytest.mark.parametrize("name", FILES)
def test_schema_is_valid(name):
    schema = SCHEMA[name]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "$id" not in schema
    assert schema["title"] and schema["description"]
    kind = name.split(".")[0]
    assert schema["properties"]["kind"]["const"] == kind
    assert "kind" in schema["required"]


@pytest.mark.parametrize("name", FILES)
def test_json_is_formatted(name):
    text = (SCHEMAS / name).read_text()
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


# ---- 2. documented: descriptions, examples, defaults, closed objects ----------------------------

@pytest.mark.parametrize("name", FILES)
def test_every_property_is_documented(name):
    problems = []
    definitions = list(object_definitions(SCHEMA[name]))
    assert definitions
    for pointer, node in definitions:
        if node.get("additionalProperties") is not False:
            problems.append(f"{pointer}: object without additionalProperties: false")
        required = set(node.get("required", []))
        for prop, sub in node["properties"].items():
            where = f"{pointer}/properties/{prop}"
            if not isinstance(sub.get("description"), str) or not sub["description"].strip():
                problems.append(f"{where}: no description")
            if not isinstance(sub.get("examples"), list) or not sub["examples"]:
                problems.append(f"{where}: no examples")
            if prop not in required and "default" not in sub:
                problems.append(f"{where}: optional without a default")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", FILES)
def test_user_named_maps_are_closed_by_pattern(name):
    """Maps keyed by user names (params, orders, legs...) constrain their keys."""
    for pointer, node in walk(SCHEMA[name]):
        if node.get("type") == "object" and "properties" not in node \
                and isinstance(node.get("additionalProperties"), dict):
            assert "propertyNames" in node, f"{pointer}: open map without propertyNames"


@pytest.mark.parametrize("name", FILES)
def test_examples_and_defaults_validate(name):
    problems = []
    for pointer, node in walk(SCHEMA[name]):
        if not ("examples" in node or "default" in node):
            continue
        validator = validator_for(f"{name}#{pointer}")
        for i, example in enumerate(node.get("examples", [])):
            for e in validator.iter_errors(example):
                problems.append(f"{pointer} examples[{i}] {example!r}: {e.message[:200]}")
        if "default" in node:
            for e in validator.iter_errors(node["default"]):
                problems.append(f"{pointer} default {node['default']!r}: {e.message[:200]}")
    assert not problems, "\n".join(problems)


# ---- 3. the example documents are the design: all of them validate ------------------------------

def test_every_example_document_is_covered():
    found = {str(p.relative_to(ROOT)) for d in ("strategies", "universes")
             for p in (ROOT / d).rglob("*.yaml") if not p.name.startswith(".")}    # (not a golden case's copy)
    assert found <= set(EXAMPLES), f"example documents not in this test: {found - set(EXAMPLES)}"


@pytest.mark.parametrize("relpath", sorted(EXAMPLES))
def test_example_document_validates(relpath):
    check_document(relpath, load_yaml(relpath))


def check_document(relpath, doc):
    kind = EXAMPLES[relpath]
    assert doc["kind"] == kind
    errs = errors(kind, doc)
    assert not errs, f"{relpath}:\n{describe(errs)}"
    header = (ROOT / relpath).read_text().splitlines()[0]
    assert header.startswith("# yaml-language-server: $schema=")
    assert header.endswith(f"schemas/{kind}.schema.json")
    target = (ROOT / relpath).parent / header.split("$schema=")[1]
    assert target.resolve() == (SCHEMAS / f"{kind}.schema.json").resolve()


def test_loader_keeps_yaml_12_scalars():
    assert load_yaml("strategies/sma_crossover.yaml")["risk"]["margin_check"] == "off"
    assert load_yaml("strategies/iron_condor.yaml")["schedule"]["flat_by"] == "15:50"
    assert load_yaml("strategies/scanners/composite.yaml")["params"]["min_volume"] == 1_000_000


def test_inline_scanner_and_risk_forms():
    """The inline forms a strategy may use instead of a file."""
    doc = load_yaml("strategies/composite_scanner.yaml")
    scan = load_yaml("strategies/scanners/composite.yaml")
    del scan["kind"], scan["name"], scan["description"], scan["universe"]
    doc["scanner"] = scan
    doc["risk"] = {k: v for k, v in load_yaml("strategies/risk/small_account.yaml").items()
                   if k not in ("kind", "name")}
    doc["universe"] = {"file": "../universes/megacaps.yaml", "groups": ["megacap_tech"]}
    assert not errors("strategy", doc), describe(errors("strategy", doc))


# ---- 4. broken documents fail at the right place, with the right keyword -----------------------

def mutate(relpath, change):
    doc = copy.deepcopy(load_yaml(relpath))
    change(doc)
    return doc


def set_in(path, value):
    def change(doc):
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


def rename(path, old, new):
    def change(doc):
        node = doc
        for key in path:
            node = node[key]
        node[new] = node.pop(old)
    return change


NEGATIVE = [
    # (document, change, error path, validator keyword)
    ("strategies/breakout.yaml", rename(["data"], "session", "sesion"),
     ("data",), "additionalProperties"),
    ("strategies/breakout.yaml", rename(["orders", "buy_risk_sized"], "tif", "time_in_force"),
     ("orders", "buy_risk_sized"), "additionalProperties"),
    ("strategies/sma_crossover.yaml", set_in(["data", "bar"], "1min"),
     ("data", "bar"), "enum"),
    ("strategies/iron_condor.yaml", set_in(["orders", "condor", "expiry"], "1dte"),
     ("orders", "condor", "expiry"), "enum"),
    ("strategies/iron_condor.yaml",
     set_in(["orders", "condor", "legs", "short_put", "right"], "puts"),
     ("orders", "condor", "legs", "short_put", "right"), "enum"),
    ("strategies/iron_condor.yaml", set_in(["orders", "condor", "price", "chase", "steps"], 0),
     ("orders", "condor", "price", "chase", "steps"), "minimum"),
    ("strategies/iron_condor.yaml", set_in(["risk", "margin_check"], "maybe"),
     ("risk", "margin_check"), "enum"),
    ("strategies/iron_condor.yaml", set_in(["schedule", "flat_by"], "25:00"),
     ("schedule", "flat_by"), "pattern"),
    ("strategies/scanners/composite.yaml", set_in(["factors", "energy", "weight"], 0),
     ("factors", "energy", "weight"), "exclusiveMinimum"),
    ("strategies/scanners/composite.yaml", set_in(["factors", "energy", "normalise"], "rankk"),
     ("factors", "energy", "normalise"), "enum"),
    ("strategies/scanners/composite.yaml", set_in(["min_score"], 140),
     ("min_score",), "maximum"),
    ("strategies/sma_crossover.yaml",
     set_in(["exit", 0], {"when": "close < sma(close, 50)", "stop": "close * 0.95"}),
     ("exit", 0), "oneOf"),
    ("strategies/sma_crossover.yaml", set_in(["exit", 0], {"reason": "no condition"}),
     ("exit", 0), "oneOf"),
    ("strategies/breakout.yaml", set_in(["orders", "buy_risk_sized", "quantity"],
                                        {"risk_percent": "1%"}),
     ("orders", "buy_risk_sized", "quantity"), "dependentRequired"),
    ("strategies/breakout.yaml", set_in(["orders", "buy_risk_sized", "type"], "stop"),
     ("orders", "buy_risk_sized"), "required"),
    ("strategies/regime_agents.yaml", set_in(["orders", "put_spread", "expiry", "dte"], [5]),
     ("orders", "put_spread", "expiry", "dte"), "minItems"),
    ("strategies/regime_agents.yaml", set_in(["arbitration", "policy"], "best"),
     ("arbitration", "policy"), "enum"),
    ("strategies/sma_crossover.yaml", set_in(["params", "fast-ma"], 3),
     ("params",), "pattern"),
    ("strategies/sma_crossover.yaml", set_in(["kind"], "strategies"),
     ("kind",), "const"),
    ("strategies/sma_crossover.yaml", lambda d: d.pop("orders"),
     (), "required"),
    ("strategies/risk/small_account.yaml", set_in(["max_drawdown"], 15),
     ("max_drawdown",), "maximum"),
    ("strategies/risk/small_account.yaml", set_in(["stale_quote_age"], "5 seconds"),
     ("stale_quote_age",), "pattern"),
    ("universes/instruments.yaml", set_in(["roots", "CL", "calendar"], "NYMEX"),
     ("roots", "CL", "calendar"), "enum"),
    ("universes/instruments.yaml", set_in(["roots", "CL", "months"], "FGHA"),
     ("roots", "CL", "months"), "pattern"),
    ("universes/instruments.yaml", set_in(["roots", "cl"], {"sec_type": "FUT"}),
     ("roots",), "pattern"),
    ("universes/instruments.yaml", lambda d: d["roots"]["GC"].pop("months"),
     ("roots", "GC"), "required"),
    ("universes/instruments.yaml", set_in(["roots", "XSP", "options", "style"], "European"),
     ("roots", "XSP", "options", "style"), "enum"),
    ("universes/futures.yaml", set_in(["contract", "month"], "back"),
     ("contract", "month"), "enum"),
    ("universes/megacaps.yaml", set_in(["exclude", 0, "sec_type"], "STOCK"),
     ("exclude", 0, "sec_type"), "enum"),
]


@pytest.mark.parametrize("relpath, change, path, keyword", NEGATIVE,
                         ids=[f"{p}:{'/'.join(map(str, path))}" for p, _, path, _ in NEGATIVE])
def test_broken_document_fails_at_the_right_place(relpath, change, path, keyword):
    doc = mutate(relpath, change)
    errs = errors(EXAMPLES[relpath], doc)
    assert errs, f"{relpath}: the change was accepted"
    best = best_match(errs)
    assert tuple(best.absolute_path) == path, describe([best])
    assert best.validator == keyword, describe([best])
    if path and path[-1] in ("params", "roots"):  # a bad key in a user-named map
        assert "propertyNames" in best.schema_path, describe([best])
