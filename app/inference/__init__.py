"""Serving: one engine owns each base model once and every resident adapter."""
