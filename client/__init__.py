"""Python client for the FLUX Fill model and the `fluxfill` command line."""
