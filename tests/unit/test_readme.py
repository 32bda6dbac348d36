"""The README's generated tables match their sources (run `make readme` to refresh them)."""

import pytest

from tests.readme_tables import README, TABLES, current_block


@pytest.mark.parametrize("name", sorted(TABLES))
def test_readme_table_matches_its_source(name: str) -> None:
    block = current_block(README.read_text(), name)
    assert block is not None, f"README.md lacks the <!-- BEGIN {name} --> block"
    assert block == TABLES[name](), f"README.md's {name} table is stale: run `make readme`"
