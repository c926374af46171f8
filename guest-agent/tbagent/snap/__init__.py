"""Snapshot sharing: CRIU snapshots of warmed functions kept in the CXL template store, and
instances started cold or restored by criu, lazy (userfaultfd) or template (mm-template)."""
