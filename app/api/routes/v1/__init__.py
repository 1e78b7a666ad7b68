"""The OpenAI-compatible routes (/v1): thin wrappers over app/openai_compat, answering errors in OpenAI's envelope
(app/api/errors.py picks it by the path)."""
