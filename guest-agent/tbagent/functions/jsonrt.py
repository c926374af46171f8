"""jsonrt: a JSON round trip of a generated document (serialise, parse, compare, digest)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

META = "/function/meta.json"


def handle(event: JsonObject) -> JsonObject:
    n = int(event.get("items", 1000))
    doc = {"items": [{"id": i, "name": f"item-{i}", "tags": ["a", "b", str(i % 7)], "price": i * 0.25}
                     for i in range(n)]}
    text = json.dumps(doc, sort_keys=True)
    back = json.loads(text)
    # The layer's name in a sandbox; a snapshot instance runs outside one.
    layer = json.loads(open(META).read())["name"] if os.path.exists(META) else None
    return {"items": len(back["items"]), "equal": back == doc, "bytes": len(text),
            "sha256": hashlib.sha256(text.encode()).hexdigest(), "layer": layer}
