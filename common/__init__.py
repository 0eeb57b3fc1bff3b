"""Small utilities every layer may use: atomic file writes and the offline environment.

The bottom layer: it imports nothing else of parley's. See docs/design.md, "Layers".
"""
