"""Mooncake's KVCache pool in the MHD's shared CXL memory (issue 13, part 1)."""
