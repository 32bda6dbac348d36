"""Adapters of the bridge's ports over Cloud Storage, Firestore, Triton and Pub/Sub."""
