"""LLM checkpoints in shared CXL memory ("persist once, load many", ServerlessLLM) and the
loaders that bring them into an inference instance: from a safetensors file on local disk, by a
chunked pipelined copy out of the MHD, or by mapping the tensors straight from it; and the live migration of a generation between nodes
(tokens, KV cache over TCP, or KV cache handed over in the MHD)."""
