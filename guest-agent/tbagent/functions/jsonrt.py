"""jsonrt: a JSON round trip of a generated document (serialise, parse, compare, digest)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def handle(event: dict[str, Any]) -> dict[str, Any]:
    n = int(event.get("items", 1000))
    doc = {"items": [{"id": i, "name": f"item-{i}", "tags": ["a", "b", str(i % 7)], "price": i * 0.25}
                     for i in range(n)]}
    text = json.dumps(doc, sort_keys=True)
    back = json.loads(text)
    with open("/function/meta.json") as fh:
        layer = json.load(fh)["name"]
    return {"items": len(back["items"]), "equal": back == doc, "bytes": len(text),
            "sha256": hashlib.sha256(text.encode()).hexdigest(), "layer": layer}
