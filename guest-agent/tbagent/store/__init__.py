"""Template store in shared CXL memory: a superblock, one allocation section and one
append-only manifest per head, records published by a final flag write after a flush.

CXL memory shared between hosts is not kept coherent by hardware, so writers flush data
before publishing and readers invalidate before reading what another head wrote."""

from tbagent.store.core import Record, Store, StoreError, StoreFull

__all__ = ["Record", "Store", "StoreError", "StoreFull"]
