"""The generated JSON Schemas accept the example fleet and reject documents with schema
errors, as an editor or a CI linter using them would (Draft 7, the dialect they declare)."""

import json
import pathlib

import jsonschema
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"


def schema_for(kind: str) -> dict:
    return json.loads((SCHEMAS / f"{kind.lower()}.schema.json").read_text())


def documents(directory: pathlib.Path):
    for path in sorted(directory.rglob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                yield path, index, doc


def errors(doc: dict) -> list:
    validator = jsonschema.Draft7Validator(schema_for(doc["kind"]))
    return sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))


def test_schemas_are_valid_draft7():
    for path in sorted(SCHEMAS.glob("*.schema.json")):
        jsonschema.Draft7Validator.check_schema(json.loads(path.read_text()))


def test_example_fleet_conforms():
    seen = set()
    for path, index, doc in documents(ROOT / "examples" / "fleet"):
        problems = [e.message for e in errors(doc)]
        assert not problems, f"{path.relative_to(ROOT)} document {index}: {problems}"
        seen.add(doc["kind"])
    assert {"Group", "DeviceSet", "Release", "Policy"} <= seen, seen


@pytest.mark.parametrize(
    "name, field",
    [("berlin", "parnet"), ("paris", "lots")],
)
def test_schema_violations_are_rejected(name, field):
    docs = {doc["metadata"]["name"]: doc for _, _, doc in documents(ROOT / "examples" / "invalid" / "schema-violations")}
    problems = [e.message for e in errors(docs[name])]
    assert any(field in p for p in problems), problems


def test_kind_and_api_version_are_fixed():
    group = {"apiVersion": "waveguide.dev/v1beta1", "kind": "Policy", "metadata": {"name": "eu"}, "spec": {}}
    messages = [e.message for e in jsonschema.Draft7Validator(schema_for("Group")).iter_errors(group)]
    assert any("waveguide.dev/v1alpha1" in m for m in messages), messages
    assert any("'Group' was expected" in m for m in messages), messages
