"""Small utilities every layer may use: atomic file writes, the offline environment, and the
root of parley's expected failures (``common.errors.ParleyError``).

The bottom layer: it imports nothing else of parley's. See docs/design.md, "Layers".
"""
