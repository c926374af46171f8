"""ServerlessLLM on the testbed: checkpoints in CXL, loaders, and live migration of a generation."""
