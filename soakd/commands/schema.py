"""Print the JSON Schema of the config file (for editors: Even Better TOML, taplo, VS Code).

The schema is generated from the config model; ``config/soakd.schema.json`` is its checked-in
copy. Durations and sizes are numbers or strings in their units; check-config stays the judge.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from soakd.commands import Subparsers
from soakd.units import DURATION_JSON_SCHEMA, SIZE_JSON_SCHEMA

SCHEMA_ID = "https://soakd.invalid/soakd.schema.json"  # a name, not a download location


def _string_form(unit_schema: dict[str, object]) -> object:
    forms = unit_schema["anyOf"]
    assert isinstance(forms, list)
    return next(f for f in forms if isinstance(f, dict) and f.get("type") == "string")


def config_schema() -> dict[str, Any]:
    """The config file's JSON Schema (draft 2020-12), without soakd's internal fields."""
    from soakd.config import INTERNAL_FIELDS, Config

    schema = Config.model_json_schema(by_alias=True, mode="validation")
    for name in INTERNAL_FIELDS:
        schema["properties"].pop(name, None)
    # a rule's limit is a number, a size or a duration, per its metric (validated by soakd)
    strings = [_string_form(SIZE_JSON_SCHEMA), _string_form(DURATION_JSON_SCHEMA)]
    limit = {"anyOf": [{"type": "number"}, *strings, {"type": "null"}], "default": None}
    rule = schema["$defs"]["Rule"]["properties"]
    for key in ("above", "below"):
        rule[key] = {**limit, "title": key.title()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "soakd configuration",
    }


def render() -> str:
    return json.dumps(config_schema(), indent=2, sort_keys=True) + "\n"


def add_parser(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "schema",
        help="print the config file's JSON Schema",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(render(), end="")
    return 0
