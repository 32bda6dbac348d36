"""tests/mutants.py stays applicable: each mutant's text is found once in today's source, and the mutated
source still compiles (a mutant that breaks the syntax would be killed by any import, proving nothing)."""

from pathlib import Path

import pytest

from tests.mutants import MUTANTS, REPO_ROOT, SELF_CHECK, Mutant, applied


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda mutant: mutant.name)
def test_the_mutant_applies_once_and_compiles(mutant: Mutant) -> None:
    source = (REPO_ROOT / mutant.path).read_text()
    mutated = applied(mutant, source)
    assert mutated != source
    compile(mutated, mutant.path, "exec")


def test_the_mutants_have_names_of_their_own() -> None:
    names = [mutant.name for mutant in MUTANTS]
    assert len(names) == len(set(names))


def test_the_runs_leave_out_this_module_which_fails_on_every_mutant() -> None:
    """Run against a mutant, the check above fails (the mutated text is gone): every mutant was "killed"."""
    assert (REPO_ROOT / SELF_CHECK).resolve() == Path(__file__).resolve()
