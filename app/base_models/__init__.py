"""Base models: the name → source registry and loading (quantization, pad tokens, GGUF conversion)."""
