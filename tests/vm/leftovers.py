"""The VM tests' name for testbed.lifecycle.leaks (what a testbed may leave behind on the host)."""

from testbed.lifecycle.leaks import assert_clean, leftovers

__all__ = ["assert_clean", "leftovers"]
