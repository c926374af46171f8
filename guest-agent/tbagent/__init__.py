"""cxl-testbed guest agent. Runs inside a node with only the standard library."""

__version__ = "0.1.0"
