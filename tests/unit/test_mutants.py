"""tests/mutants.py stays applicable: each mutant's text is found once in today's source, and the mutated
source still compiles (a mutant that breaks the syntax would be killed by any import, proving nothing)."""

import pytest

from tests.mutants import MUTANTS, REPO_ROOT, Mutant, applied


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda mutant: mutant.name)
def test_the_mutant_applies_once_and_compiles(mutant: Mutant) -> None:
    source = (REPO_ROOT / mutant.path).read_text()
    mutated = applied(mutant, source)
    assert mutated != source
    compile(mutated, mutant.path, "exec")


def test_the_mutants_have_names_of_their_own() -> None:
    names = [mutant.name for mutant in MUTANTS]
    assert len(names) == len(set(names))
