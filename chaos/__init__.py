"""Load, soak and chaos runs of the whole job path: emulators, a real tritonserver, bridge processes."""
