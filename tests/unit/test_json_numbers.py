"""Numbers from JSON written by others: finite floats, or None."""

from trigger_server.json_numbers import finite


def test_json_numbers_are_finite_floats():
    assert finite(3) == 3.0 and isinstance(finite(3), float)
    assert finite(-1.5) == -1.5


def test_anything_else_is_none():
    for value in (None, True, False, "1", [1], {"a": 1}, float("nan"), float("inf"),
                  float("-inf"), 10**400, -(10**400)):
        assert finite(value) is None, value
