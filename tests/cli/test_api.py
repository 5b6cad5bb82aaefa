"""The public API: every exported name resolves, and the package docstring's example runs."""

from __future__ import annotations

import doctest

import pytest

import hsae


@pytest.mark.parametrize("name", [n for n in hsae.__all__ if n != "__version__"])
def test_every_exported_name_resolves(name: str) -> None:
    obj = getattr(hsae, name)
    assert getattr(obj, "__name__", name) == name  # the object, not a stand-in of another name


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        hsae.no_such_thing  # noqa: B018


def test_package_docstring_example_runs() -> None:
    result = doctest.testmod(hsae, verbose=False)
    assert result.attempted > 0 and result.failed == 0
