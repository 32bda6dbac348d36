"""Test order: the modules that take minutes run first.

`make test` spreads modules over one pytest-xdist worker per core (`--dist loadscope`: a module's tests, and
so its module fixtures, stay on one worker). Workers take modules in collection order, so a long module
collected last would leave one worker running it alone at the end; started first, the others run beside it.
"""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist hands out loadscope modules by test count, most first, unless told not to: the chaos
    # module (3 tests, 4 minutes) then ran last while the other worker sat idle (the two busy 733 s and
    # 592 s, 12 min 31 s in all; in collection order 680 s and 675 s, 11 min 37 s). `loadscopereorder`
    # exists only where xdist is loaded.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A stable sort: each module's tests stay together and in their order.
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
