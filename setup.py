"""Packages are found, not listed: every package under inpaint/, client/ and bridge/ ships as fluxfill.<path>.

pyproject.toml holds everything else. This file exists only because setuptools' declarative `packages.find`
cannot put found packages under a prefix (the top-level folders are mapped under one `fluxfill` namespace so
nothing generic such as `client` lands in site-packages); a hand-kept list once shipped without
fluxfill.bridge.adapters.
"""

from setuptools import find_namespace_packages, find_packages, setup

TOP_LEVEL = ("inpaint", "client", "bridge")

setup(
    packages=[
        *(f"fluxfill.{name}" for name in find_packages(include=[f"{top}*" for top in TOP_LEVEL])),
        # The Triton model repository (model.py files, config.pbtxt as package-data in pyproject): `fluxfill
        # serve` finds it beside client/, so an installed wheel serves from any directory.
        "fluxfill.model_repository",
        *(
            f"fluxfill.model_repository.{name}"
            for name in find_namespace_packages(where="model_repository", exclude=["*__pycache__*"])
        ),
    ],
    package_dir={
        **{f"fluxfill.{top}": top for top in TOP_LEVEL},
        "fluxfill.model_repository": "model_repository",
    },
)
