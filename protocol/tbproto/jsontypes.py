"""The names for JSON in the host and the agent: the one place `Any` stands for data that has
crossed (or is about to cross) the JSON boundary and that no typed decoder has checked yet.

A value typed `Json` came from json.loads (an agent reply, a raw.jsonl record, a guest's file) or
goes to json.dumps; whoever reads it checks it (tbproto.codec.decode_as, isinstance)."""

from typing import Any

Json = Any  # a JSON value as json.loads returns it (or json.dumps takes it): unchecked
JsonObject = dict[str, Json]  # a JSON object: its values unchecked

__all__ = ["Json", "JsonObject"]
