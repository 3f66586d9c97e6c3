"""The artifact store: content-addressed blobs (method code, predictions, logs)."""
