"""Generate the documentation's tables from their sources of truth; `make readme` rewrites them.

The tables live in the README and the reference files under docs/; tests/unit/test_readme.py fails when one
differs from what this renders.
"""

import re
import sys
from collections.abc import Callable
from pathlib import Path

from fluxfill.bridge.settings import NO_VALUE, setting_rows
from fluxfill.inpaint.config import DESCRIPTIONS, PARAMETER_NAMES
from fluxfill.inpaint.contract import INPUTS, OUTPUTS, STREAM_OUTPUTS, TensorSpec
from fluxfill.inpaint.metrics import FAMILIES
from tests.support import REPO_ROOT, repository_parameters

README = REPO_ROOT / "README.md"


def documents() -> list[Path]:
    """The README and every reference file it links under docs/."""
    return [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]


def model_parameters() -> str:
    """config.pbtxt parameters with their shipped values and meaning."""
    values = repository_parameters()
    rows = ["| parameter | shipped value | meaning |", "|---|---|---|"]
    for name in PARAMETER_NAMES:
        shipped = f"`{values[name]}`" if values[name] else "(empty)"
        rows.append(f"| `{name}` | {shipped} | {DESCRIPTIONS[name]} |")
    return "\n".join(rows)


def _tensor_rows(specs: tuple[TensorSpec, ...]) -> list[str]:
    rows = ["| tensor | type | shape | required | meaning |", "|---|---|---|---|---|"]
    for spec in specs:
        shape = "[" + ", ".join("-1" if d == -1 else str(d) for d in spec.shape) + "]"
        required = "optional" if spec.optional else "yes"
        rows.append(f"| `{spec.name}` | {spec.datatype} | {shape} | {required} | {spec.description} |")
    return rows


def tensor_contract() -> str:
    """The model's inputs and outputs from fluxfill.inpaint.contract."""
    return "\n".join(
        [
            "Inputs (both models):",
            "",
            *_tensor_rows(INPUTS),
            "",
            "Outputs of `flux_fill`:",
            "",
            *_tensor_rows(OUTPUTS),
            "",
            "Outputs of `flux_fill_stream` (each progress response has STEP and TOTAL_STEPS only):",
            "",
            *_tensor_rows(STREAM_OUTPUTS),
        ]
    )


def model_metrics() -> str:
    """Our metric families on Triton's /metrics, from fluxfill.inpaint.metrics."""
    rows = ["| metric | type | labels | what it measures |", "|---|---|---|---|"]
    for spec in FAMILIES.values():
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "—"
        rows.append(f"| `{spec.name}` | {spec.kind} | {labels} | {spec.description} |")
    return "\n".join(rows)


def bridge_settings() -> str:
    """The bridge's environment variables from fluxfill.bridge.settings."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, default, meaning in setting_rows():
        shown = default if default in NO_VALUE else f"`{default}`"
        rows.append(f"| `{name}` | {shown} | {meaning} |")
    return "\n".join(rows)


TABLES: dict[str, Callable[[], str]] = {
    "bridge-settings": bridge_settings,
    "model-parameters": model_parameters,
    "tensor-contract": tensor_contract,
    "model-metrics": model_metrics,
}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- BEGIN {name} -->\n)(.*?)(<!-- END {name} -->)", re.DOTALL)


def current_block(text: str, name: str) -> str | None:
    """The text between a table's markers in the README, or None when the markers are missing."""
    match = _block(name).search(text)
    return match.group(2).rstrip("\n") if match else None


def rewrite() -> None:
    """Replace every generated block in every document with a fresh rendering."""
    for path in documents():
        text = path.read_text()
        for name, render in TABLES.items():
            text = _block(name).sub(lambda m, r=render: f"{m.group(1)}{r()}\n{m.group(3)}", text)
        path.write_text(text)


if __name__ == "__main__":
    rewrite()
    sys.exit(0)
