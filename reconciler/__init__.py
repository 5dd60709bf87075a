"""Palisade reconciler: policy repository → validated, signed, versioned bundles."""
