"""Image decoding, embeddings and classifier heads: a plain library (no web, no storage)."""
