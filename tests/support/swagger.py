"""Check requests (and the simulator's responses) against Chatwoot's own OpenAPI 3.1 spec.

The spec is ``swagger/swagger.json`` from Chatwoot, vendored in ``tests/fixtures/chatwoot/`` (its
README says which version and how to refresh it); ``CHATWOOT_SWAGGER_PATH`` points elsewhere.
Schemas are checked with the OAS 3.1 dialect of JSON Schema 2020-12, resolving ``$ref`` inside
the spec.

Only the ``/api/v1/...`` paths count: the generated spec also carries a stray copy of one path
without that prefix, which real Chatwoot does not serve.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openapi_schema_validator import OAS31Validator, oas31_format_checker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from chatbuffer.simulator.chatwoot import RecordedRequest

SPEC_PATH_ENV = "CHATWOOT_SWAGGER_PATH"
_SPEC_URI = "https://chatwoot.invalid/swagger.json"
_API_PREFIX = "/api/v1/"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_JSON_MEDIA = "application/json"


def default_spec_path() -> Path:
    override = os.environ.get(SPEC_PATH_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / "fixtures" / "chatwoot" / "swagger.json"


def _pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def _where(prefix: str, path: Any) -> str:
    return prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


@dataclass(frozen=True, slots=True)
class _PathTemplate:
    template: str
    # A literal segment, or None where the template has a {parameter}.
    segments: tuple[str | None, ...]

    def matches(self, parts: list[str]) -> bool:
        return len(parts) == len(self.segments) and all(
            literal is None or literal == part
            for literal, part in zip(self.segments, parts, strict=True)
        )

    def specificity(self) -> tuple[bool, ...]:
        # OpenAPI: concrete segments win over templated ones, earliest segment first.
        return tuple(literal is None for literal in self.segments)

    def arguments(self, parts: list[str]) -> dict[str, str]:
        names = re.findall(r"{([^}]+)}", self.template)
        values = [p for literal, p in zip(self.segments, parts, strict=True) if literal is None]
        return dict(zip(names, values, strict=True))


class SwaggerValidator:
    """Callable as a ``ChatwootSimulator`` validator: returns readable problems, empty if none."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self._spec = spec
        resource: Resource[Any] = Resource.from_contents(spec, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(_SPEC_URI, resource)
        self._validators: dict[str, Any] = {}
        self._templates = [
            _PathTemplate(
                template,
                tuple(
                    None if seg.startswith("{") and seg.endswith("}") else seg
                    for seg in template.split("/")
                ),
            )
            for template in spec["paths"]
            if template.startswith(_API_PREFIX)
        ]

    def __call__(self, request: RecordedRequest) -> list[str]:
        return self.request_problems(
            request.method, request.path, request.headers, request.json, request.query
        )

    def request_problems(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: Any | None,
        query: Mapping[str, str] | None = None,
    ) -> list[str]:
        found = self._operation(method, path)
        if isinstance(found, str):
            return [found]
        template, operation, arguments = found
        where = f"{method.upper()} {template}"
        problems = self._parameter_problems(template, operation, arguments, dict(query or {}))
        problems += self._security_problems(operation, headers)
        problems += self._body_problems(template, method, operation, body)
        return [f"{where}: {problem}" for problem in problems]

    def response_problems(self, method: str, path: str, status: int, body: Any | None) -> list[str]:
        """Check a response body against the operation's documented response schema."""
        found = self._operation(method, path)
        if isinstance(found, str):
            return [found]
        template, operation, _ = found
        responses = operation.get("responses", {})
        key = str(status) if str(status) in responses else "default"
        if key not in responses:
            return [f"{method.upper()} {template}: status {status} is not documented"]
        content = self._deref(responses[key]).get("content", {})
        if _JSON_MEDIA not in content:
            if body is None:
                return []
            return [f"{method.upper()} {template}: status {status} documents no JSON body"]
        pointer = _pointer(
            "paths", template, method.lower(), "responses", key, "content", _JSON_MEDIA, "schema"
        )
        return [
            f"{method.upper()} {template} -> {status}: {problem}"
            for problem in self._schema_problems(pointer, body, "response")
        ]

    # -- lookup ------------------------------------------------------------------------------

    def _operation(
        self, method: str, path: str
    ) -> str | tuple[str, dict[str, Any], dict[str, str]]:
        parts = path.split("/")
        candidates = sorted(
            (t for t in self._templates if t.matches(parts)), key=_PathTemplate.specificity
        )
        if not candidates:
            return f"{method.upper()} {path}: no such path in the Chatwoot API"
        for candidate in candidates:
            operation = self._spec["paths"][candidate.template].get(method.lower())
            if operation is not None:
                return candidate.template, operation, candidate.arguments(parts)
        allowed = sorted(
            m.upper() for c in candidates for m in self._spec["paths"][c.template] if m in _METHODS
        )
        return f"{method.upper()} {path}: method not allowed (spec has {', '.join(allowed)})"

    def _deref(self, node: Any) -> dict[str, Any]:
        # Parameters and responses may be $refs into components; schemas are left to the
        # JSON Schema validator, which resolves them itself.
        while isinstance(node, dict) and "$ref" in node:
            ref = str(node["$ref"])
            node = self._registry.resolver(_SPEC_URI).lookup(ref).contents
        return node if isinstance(node, dict) else {}

    # -- checks ------------------------------------------------------------------------------

    def _parameter_problems(
        self,
        template: str,
        operation: Mapping[str, Any],
        arguments: dict[str, str],
        query: dict[str, str],
    ) -> list[str]:
        declared: dict[tuple[str, str], dict[str, Any]] = {}
        for raw in [
            *self._spec["paths"][template].get("parameters", []),
            *operation.get("parameters", []),
        ]:
            parameter = self._deref(raw)
            if parameter.get("in") in ("path", "query"):
                declared[(str(parameter["in"]), str(parameter["name"]))] = parameter.get(
                    "schema", {}
                )
        problems = []
        for place, values in (("path", arguments), ("query", query)):
            for name, text in values.items():
                if (place, name) not in declared:
                    problems.append(f"{place} parameter {name} is not in the spec")
                    continue
                schema = declared[(place, name)]
                value = _coerce(text, schema.get("type"))
                if value is None:
                    problems.append(
                        f"{place} parameter {name}={text!r} is not a valid {schema['type']}"
                    )
                    continue
                for error in OAS31Validator(schema).iter_errors(value):
                    problems.append(f"{place} parameter {name}={text!r}: {error.message}")
        return problems

    def _security_problems(
        self, operation: Mapping[str, Any], headers: Mapping[str, str]
    ) -> list[str]:
        requirements = operation.get("security", self._spec.get("security", []))
        if not requirements:
            return []
        schemes = self._spec.get("components", {}).get("securitySchemes", {})
        present = {name.lower() for name, value in headers.items() if value}
        missing_sets = []
        for requirement in requirements:
            missing = [
                str(schemes[name]["name"])
                for name in requirement
                if schemes[name].get("in") == "header"
                and str(schemes[name]["name"]).lower() not in present
            ]
            if not missing:
                return []
            missing_sets.append(" + ".join(missing))
        return [f"missing auth header ({' or '.join(sorted(set(missing_sets)))})"]

    def _body_problems(
        self, template: str, method: str, operation: Mapping[str, Any], body: Any | None
    ) -> list[str]:
        request_body = self._deref(operation.get("requestBody"))
        if not request_body:
            return [] if body is None else ["this operation takes no request body"]
        if body is None:
            return ["a JSON request body is required"] if request_body.get("required") else []
        if _JSON_MEDIA not in request_body.get("content", {}):
            return ["this operation takes no JSON request body"]
        pointer = _pointer(
            "paths", template, method.lower(), "requestBody", "content", _JSON_MEDIA, "schema"
        )
        return self._schema_problems(pointer, body, "body")

    def _schema_problems(self, pointer: str, instance: Any, label: str) -> list[str]:
        validator = self._validators.get(pointer)
        if validator is None:
            validator = OAS31Validator(
                {"$ref": _SPEC_URI + "#" + pointer},
                registry=self._registry,
                format_checker=oas31_format_checker,
            )
            self._validators[pointer] = validator
        errors = sorted(
            validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]
        )
        return [f"{_where(label, error.absolute_path)}: {error.message}" for error in errors]


def _coerce(text: str, kind: Any) -> Any | None:
    """Turn a path segment into the JSON value the parameter schema describes, None if it can't."""
    if kind == "integer":
        return int(text) if re.fullmatch(r"-?\d+", text) else None
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            return None
    if kind == "boolean":
        return {"true": True, "false": False}.get(text)
    return text


@functools.lru_cache(maxsize=4)
def _cached(path: Path) -> SwaggerValidator:
    return SwaggerValidator(json.loads(path.read_text(encoding="utf-8")))


def load_validator(path: Path | None = None) -> SwaggerValidator:
    """A validator for the spec at ``path`` (default: :func:`default_spec_path`), parsed once."""
    return _cached((path or default_spec_path()).resolve())
