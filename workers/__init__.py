"""Streaming inference workers (built on the pure core of streams)."""
