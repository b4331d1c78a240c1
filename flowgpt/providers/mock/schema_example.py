"""A small, readable instance of a JSON Schema, for the mock provider and for docs.

``minimal_instance(schema)`` builds a value that validates against the schema (Draft 2020-12
by default, or the draft named by ``$schema``) and reads like real data: strings are
``"example title"`` rather than ``""``, array items are numbered (``"example section 1"``),
numbers sit at the low end of their range, arrays have ``minItems`` items. Every declared
property is filled in, not only the required ones, so a workflow whose later templates
read optional fields still runs under ``--mock``; when that breaks the schema (``oneOf``
over properties, ``dependentSchemas``...) only the required ones are used.

The result is always checked with ``jsonschema``; :class:`SchemaExampleError` is raised when
no valid instance was found (an unsatisfiable schema, or constructs beyond this generator).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from flowgpt.providers.mock.pattern_example import example_for_pattern
from flowgpt.providers.mock.scalar_example import (
    _make_string,
    _number_candidates,
    _singular,
    _text,
    _Unsatisfiable,
)

__all__ = ["SchemaExampleError", "example_for_pattern", "minimal_instance"]

# Optional properties are filled only this deep, so optional recursion (a linked list's
# `next: {$ref: "#"}`) terminates.
_OPTIONAL_DEPTH = 6
_MAX_DEPTH = 48
_COMBINATION_LIMIT = 64

_TYPE_ORDER = ("object", "array", "string", "integer", "number", "boolean", "null")


class SchemaExampleError(ValueError):
    """No valid instance could be built; ``candidate`` is the best attempt (or None)."""

    def __init__(self, message: str, candidate: Any = None) -> None:
        super().__init__(message)
        self.candidate = candidate


def minimal_instance(schema: Mapping[str, Any] | bool) -> Any:
    """A small instance that validates against ``schema`` (checked with jsonschema)."""
    if schema is True or schema == {}:
        return {}  # any JSON is fine; a JSON reply is conventionally an object
    if schema is False:
        raise SchemaExampleError("the schema `false` accepts nothing")
    generator = _Generator(schema)
    first: Any = None
    reasons: list[str] = []
    for all_properties in (True, False):
        generator.all_properties = all_properties
        try:
            candidate = generator.generate(schema, hint=None, index=None, depth=0)
        except _Unsatisfiable as exc:
            reasons.append(str(exc))
            continue
        except RecursionError:
            reasons.append("the schema recurses without end")
            continue
        if generator.valid(candidate, schema):
            return candidate
        if first is None:
            first = candidate
    detail = f" ({reasons[0]})" if reasons else ""
    raise SchemaExampleError(f"could not build a valid example for this schema{detail}", first)


class _Generator:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        cls = validator_for(root, default=Draft202012Validator)
        self.validator: Validator = cls(root, format_checker=cls.FORMAT_CHECKER)
        self.all_properties = True

    def valid(self, instance: Any, schema: Any) -> bool:
        # evolve keeps the root's resolver, so "$ref": "#/$defs/x" works in subschemas
        return bool(self.validator.evolve(schema=schema).is_valid(instance))

    # ---------------------------------------------------------------- dispatch

    def generate(self, schema: Any, *, hint: str | None, index: int | None, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise _Unsatisfiable("the schema nests too deeply")
        if schema is True or schema is None:
            return _text(hint, index)
        if schema is False:
            raise _Unsatisfiable("a subschema is `false`")
        if not isinstance(schema, Mapping):
            raise _Unsatisfiable("a subschema is not an object")
        schema = dict(schema)

        if "$ref" in schema or "$dynamicRef" in schema:
            ref = schema.pop("$ref", None) or schema.pop("$dynamicRef")
            target = self.resolve(str(ref))
            merged = _merge(target, schema) if isinstance(target, Mapping) else target
            return self.generate(merged, hint=hint, index=index, depth=depth + 1)
        if "allOf" in schema:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for sub in schema["allOf"]:
                merged = _merge(merged, self.expand(sub, depth))
            return self.generate(merged, hint=hint, index=index, depth=depth + 1)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self.from_enum(schema, index)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.from_branches(schema, key, hint=hint, index=index, depth=depth)
        if "if" in schema:
            return self.from_condition(schema, hint=hint, index=index, depth=depth)
        return self.from_types(schema, hint=hint, index=index, depth=depth)

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise _Unsatisfiable(f"only local $ref are supported, not {ref!r}")
        fragment = ref[1:]
        if fragment and not fragment.startswith("/"):
            found = _find_anchor(self.root, fragment)
            if found is None:
                raise _Unsatisfiable(f"$ref {ref!r} points nowhere")
            return found
        node: Any = self.root
        for raw in fragment.split("/")[1:]:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise _Unsatisfiable(f"$ref {ref!r} points nowhere")
        return node

    def expand(self, schema: Any, depth: int) -> Any:
        """Inline a top-level $ref so allOf can merge what it points to."""
        while isinstance(schema, Mapping) and "$ref" in schema and depth < _MAX_DEPTH:
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            target = self.resolve(str(schema["$ref"]))
            schema = _merge(target, rest) if isinstance(target, Mapping) else target
            depth += 1
        if schema is True:
            return {}
        if schema is False:
            raise _Unsatisfiable("allOf contains `false`")
        return schema

    # ------------------------------------------------------------ combinators

    def from_enum(self, schema: dict[str, Any], index: int | None) -> Any:
        options = list(schema["enum"])
        if not options:
            raise _Unsatisfiable("`enum` is empty")
        rest = {k: v for k, v in schema.items() if k != "enum"}
        start = (index or 0) % len(options)
        for value in options[start:] + options[:start]:
            if self.valid(value, rest):
                return value
        return options[start]

    def from_branches(
        self, schema: dict[str, Any], key: str, *, hint: str | None, index: int | None, depth: int
    ) -> Any:
        base = {k: v for k, v in schema.items() if k != key}

        def make(branch: Any) -> Callable[[], Any]:
            return lambda: self.generate(
                _merge(base, self.expand(branch, depth)), hint=hint, index=index, depth=depth + 1
            )

        makers = [make(branch) for branch in schema[key]]
        return self.first_valid(makers, schema, f"no `{key}` branch can be satisfied")

    def from_condition(
        self, schema: dict[str, Any], *, hint: str | None, index: int | None, depth: int
    ) -> Any:
        base = {k: v for k, v in schema.items() if k not in ("if", "then", "else")}
        candidate = self.generate(base, hint=hint, index=index, depth=depth + 1)
        branch = "then" if self.valid(candidate, schema["if"]) else "else"
        if branch in schema:
            merged = _merge(base, self.expand(schema[branch], depth))
            candidate = self.generate(merged, hint=hint, index=index, depth=depth + 1)
        return candidate

    def from_types(
        self, schema: dict[str, Any], *, hint: str | None, index: int | None, depth: int
    ) -> Any:
        def make(kind: str) -> Callable[[], Any]:
            return lambda: self.of_type(kind, schema, hint=hint, index=index, depth=depth)

        makers = [make(kind) for kind in _types(schema)]
        return self.first_valid(makers, schema, "no type in the schema can be satisfied")

    def first_valid(
        self, makers: list[Callable[[], Any]], schema: dict[str, Any], none: str
    ) -> Any:
        """The first candidate that satisfies ``schema``, else the first that could be made
        at all; ``none`` says why when no maker could make one."""
        first: Any = _NOTHING
        for make in makers:
            try:
                candidate = make()
            except _Unsatisfiable:
                continue
            if self.valid(candidate, schema):
                return candidate
            if first is _NOTHING:
                first = candidate
        if first is _NOTHING:
            raise _Unsatisfiable(none)
        return first

    def of_type(
        self, kind: str, schema: dict[str, Any], *, hint: str | None, index: int | None, depth: int
    ) -> Any:
        if kind == "object":
            return self.make_object(schema, index, depth)
        if kind == "array":
            return self.make_array(schema, hint, depth)
        if kind == "string":
            return _make_string(schema, hint, index)
        if kind in ("integer", "number"):
            return self.make_number(schema, integer=kind == "integer", index=index)
        if kind == "boolean":
            return (index or 0) % 2 == 1
        if kind == "null":
            return None
        raise _Unsatisfiable(f"unknown type {kind!r}")

    # ---------------------------------------------------------------- objects

    def make_object(self, schema: dict[str, Any], index: int | None, depth: int) -> dict[str, Any]:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        required = [str(r) for r in schema.get("required") or []]
        names = list(required)
        if self.all_properties and depth < _OPTIONAL_DEPTH:
            names = list(dict.fromkeys([*properties, *required]))
        else:
            names = [n for n in properties if n in required] + [
                n for n in required if n not in properties
            ]
        result: dict[str, Any] = {}
        for name in names:
            # objects in an array number their fields: "example name 1", "example name 2"
            result[name] = self.generate(
                self.property_schema(schema, name), hint=name, index=index, depth=depth + 1
            )
        for name, deps in (schema.get("dependentRequired") or {}).items():
            if name in result:
                for dep in deps:
                    if dep not in result:
                        sub = self.property_schema(schema, dep)
                        result[dep] = self.generate(sub, hint=dep, index=None, depth=depth + 1)
        counter = 0
        while len(result) < int(schema.get("minProperties", 0)):
            counter += 1
            key = _new_key(schema, result, counter)
            result[key] = self.generate(
                self.property_schema(schema, key), hint="value", index=None, depth=depth + 1
            )
        return result

    def property_schema(self, schema: Mapping[str, Any], name: str) -> Any:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        if name in properties:
            return properties[name]
        for pattern, sub in (schema.get("patternProperties") or {}).items():
            if re.search(pattern, name):
                return sub
        extra = schema.get("additionalProperties", True)
        return {} if extra is True else extra

    # ----------------------------------------------------------------- arrays

    def make_array(self, schema: dict[str, Any], hint: str | None, depth: int) -> list[Any]:
        item_hint = _singular(hint) if hint else "item"
        prefix = schema.get("prefixItems")
        items = schema.get("items", True)
        if isinstance(items, list):  # draft 4-2019: tuple form
            prefix, items = items, schema.get("additionalItems", True)
        result: list[Any] = []
        for i, sub in enumerate(prefix or []):
            if i >= max(int(schema.get("minItems", 0)), 0) and not self.all_properties:
                break
            result.append(self.generate(sub, hint=item_hint, index=i, depth=depth + 1))
        while len(result) < int(schema.get("minItems", 0)):
            if items is False:
                raise _Unsatisfiable("minItems needs more items than allowed")
            result.append(self.generate(items, hint=item_hint, index=len(result), depth=depth + 1))
        if "contains" in schema:
            wanted = int(schema.get("minContains", 1))
            have = sum(1 for x in result if self.valid(x, schema["contains"]))
            while have < wanted:
                result.append(
                    self.generate(
                        schema["contains"], hint=item_hint, index=len(result), depth=depth + 1
                    )
                )
                have += 1
        if "maxItems" in schema:
            del result[int(schema["maxItems"]) :]
        return result

    # ---------------------------------------------------------------- numbers

    def make_number(self, schema: dict[str, Any], *, integer: bool, index: int | None) -> Any:
        numeric: dict[str, Any] = {
            k: schema[k]
            for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
            if k in schema
        }
        numeric["type"] = "integer" if integer else "number"
        for value in _number_candidates(numeric, index or 0):
            if integer and not float(value).is_integer():
                continue
            value = int(value) if integer else value
            if self.valid(value, numeric):
                return value
        raise _Unsatisfiable("no number fits the bounds")


_NOTHING = object()


def _new_key(schema: Mapping[str, Any], taken: Mapping[str, Any], counter: int) -> str:
    """A fresh property name the schema allows (for minProperties)."""
    patterns = list((schema.get("patternProperties") or {}).keys())
    closed = schema.get("additionalProperties", True) is False
    options = [] if closed else [f"key{counter}"]
    for pattern in patterns:
        base = example_for_pattern(pattern)
        if base is not None:
            options += [f"{base}{counter}", base, f"{base}{'x' * counter}", f"{counter}{base}"]
    for key in options:
        if key in taken:
            continue
        if not closed or any(re.search(p, key) for p in patterns):
            return key
    raise _Unsatisfiable("minProperties needs more properties than the schema allows")


def _types(schema: Mapping[str, Any]) -> list[str]:
    declared = schema.get("type")
    if isinstance(declared, str):
        return [declared]
    if isinstance(declared, list):
        # a nullable field should still look like data: null goes last
        return sorted((str(t) for t in declared), key=lambda t: t == "null")
    keys = set(schema)
    if keys & {
        "properties",
        "required",
        "additionalProperties",
        "patternProperties",
        "minProperties",
        "maxProperties",
        "propertyNames",
        "dependentRequired",
    }:
        return ["object"]
    if keys & {"items", "prefixItems", "minItems", "maxItems", "contains", "uniqueItems"}:
        return ["array"]
    if keys & {"minLength", "maxLength", "pattern", "format"}:
        return ["string"]
    if keys & {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}:
        return ["number"]
    return ["string", *[t for t in _TYPE_ORDER if t != "string"]]


_LARGER = {"minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties", "minContains"}
_SMALLER = {"maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties", "maxContains"}


def _merge(a: Mapping[str, Any], b: Any) -> dict[str, Any]:
    """Both constraints at once (for allOf and for a branch on top of its parent)."""
    out = dict(a)
    if b is True or not isinstance(b, Mapping):
        return out
    for key, value in b.items():
        if key not in out:
            out[key] = value
            continue
        current = out[key]
        if key == "properties":
            merged = dict(current)
            for name, sub in value.items():
                merged[name] = {"allOf": [merged[name], sub]} if name in merged else sub
            out[key] = merged
        elif key == "required":
            out[key] = list(dict.fromkeys([*current, *value]))
        elif key in _LARGER and not isinstance(value, bool):
            out[key] = max(current, value)
        elif key in _SMALLER and not isinstance(value, bool):
            out[key] = min(current, value)
        elif key == "type":
            out[key] = _intersect_types(current, value)
        elif key == "enum":
            out[key] = [x for x in current if x in value]
        elif key in ("anyOf", "oneOf"):
            pairs = [_merge(x, y) for x in current for y in value if isinstance(x, Mapping)]
            out[key] = pairs[:_COMBINATION_LIMIT]
        elif key == "allOf":
            out[key] = [*current, *value]
        # any other clash: keep the first; the final validation decides
    return out


def _intersect_types(a: Any, b: Any) -> list[str]:
    left = [a] if isinstance(a, str) else list(a)
    right = [b] if isinstance(b, str) else list(b)
    result = [t for t in left if t in right]
    if "number" in left and "integer" in right and "integer" not in result:
        result.append("integer")
    if "integer" in left and "number" in right and "integer" not in result:
        result.append("integer")
    return result


def _find_anchor(node: Any, anchor: str) -> Any:
    if isinstance(node, Mapping):
        if node.get("$anchor") == anchor or node.get("$dynamicAnchor") == anchor:
            return node
        for value in node.values():
            found = _find_anchor(value, anchor)
            if found is not None:
                return found
    elif isinstance(node, list):
        for value in node:
            found = _find_anchor(value, anchor)
            if found is not None:
                return found
    return None
