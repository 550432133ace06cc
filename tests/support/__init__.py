"""Test-only helpers shared by the tests and the benchmark: a GGUF writer with K-quant encoders, a fake
Hugging Face Hub, tiny-story recorders."""
