"""The VM tests' name for testbed.leaks (what a testbed may leave behind on the host)."""

from testbed.leaks import assert_clean, leftovers

__all__ = ["assert_clean", "leftovers"]
