"""The Pub/Sub to Firebase to Triton bridge service."""
