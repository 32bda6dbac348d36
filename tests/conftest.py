"""Test order: the modules that take minutes run first.

`make test` spreads modules over one pytest-xdist worker per core (`--dist loadscope`: a module's tests, and
so its module fixtures, stay on one worker). Workers take modules in collection order, so a long module
collected last would leave one worker running it alone at the end; started first, the others run beside it.
"""

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A stable sort: each module's tests stay together and in their order.
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
