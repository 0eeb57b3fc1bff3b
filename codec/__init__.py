"""The personal speech codec (CSM): its settings, model, latent packing, bundle and checkpoint.

Both :mod:`fl` (training, aggregation) and :mod:`media` (the call path, captions) stand on this
package; it stands only on :mod:`schemas` and :mod:`common`. See docs/design.md, "Layers".
"""
