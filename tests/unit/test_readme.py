"""The documentation's generated tables match their sources (run `make readme` to refresh them)."""

import pytest

from tests.readme_tables import TABLES, current_block, documents


@pytest.mark.parametrize("name", sorted(TABLES))
def test_each_generated_table_is_in_one_document_and_matches_its_source(name: str) -> None:
    found = {path.name: block for path in documents() if (block := current_block(path.read_text(), name))}
    assert len(found) == 1, f"the <!-- BEGIN {name} --> block is in {sorted(found) or 'no document'}"
    ((where, block),) = found.items()
    assert block == TABLES[name](), f"{where}'s {name} table is stale: run `make readme`"
