"""JSON Schema of every wire message, and of the JSON headers of the binary (version 2) ones, exported to
docs/schemas/ (a test checks the files match the models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from streams.messages import WIRE_MODELS
from streams.wire import FeatureHeader, JoinedHeader

BINARY_HEADERS: dict[str, type[BaseModel]] = {"feature_header_v2": FeatureHeader, "joined_header_v2": JoinedHeader}


def schemas() -> dict[str, dict[str, Any]]:
    """Every wire message's JSON Schema, by name."""
    return {name: model.model_json_schema(mode="validation") for name, model in {**WIRE_MODELS, **BINARY_HEADERS}.items()}


def render(schema: dict[str, Any]) -> str:
    """A schema as the stable JSON text written to docs/schemas/."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export(out: Path) -> list[Path]:
    """Write one JSON Schema file per wire message into `out`. -> the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in schemas().items():
        path = out / f"{name}.schema.json"
        path.write_text(render(schema))
        paths.append(path)
    return paths
