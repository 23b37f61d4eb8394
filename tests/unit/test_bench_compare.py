"""bench/compare.py's arithmetic: per-round figures, the rounds' differences, and the effect
with the bias toward the stack started second taken out."""

import pytest

from bench import compare


def test_a_rounds_figures_are_in_milliseconds():
    fig = compare.round_figures([0.001 * k for k in range(1, 101)])  # 1..100 ms
    assert fig["p50"] == pytest.approx(50.5)
    assert fig["mean"] == pytest.approx(50.5)
    assert fig["p99"] == pytest.approx(99.01)


def test_differences_are_the_median_of_the_rounds_b_minus_a():
    a = [{"p50": 4.0, "mean": 4.0, "p90": 5.0, "p99": 6.0},
         {"p50": 4.2, "mean": 4.1, "p90": 5.0, "p99": 9.0},
         {"p50": 3.9, "mean": 4.0, "p90": 5.0, "p99": 6.0}]
    b = [{"p50": 3.9, "mean": 4.0, "p90": 5.5, "p99": 6.0},
         {"p50": 4.0, "mean": 4.1, "p90": 5.5, "p99": 6.0},
         {"p50": 4.0, "mean": 4.0, "p90": 5.5, "p99": 6.0}]
    d = compare.differences(a, b)
    assert d["p50"] == pytest.approx((4.0, 4.0, -0.1, 2))
    assert d["p90"] == pytest.approx((5.0, 5.5, 0.5, 0))
    assert d["p99"][2] == pytest.approx(0.0)


def test_the_second_stacks_bias_cancels_between_the_two_orders():
    """The same change measured with B started second (bias -0.06 on B) and first (bias -0.06
    on A, so +0.06 on B - A): the mean of the two is the change alone."""
    change, bias = -0.10, -0.06
    first = {n: (0.0, 0.0, change + bias, 0) for n in compare.FIGURES}
    second = {n: (0.0, 0.0, change - bias, 0) for n in compare.FIGURES}
    assert compare.order_free(first, second)["p50"] == pytest.approx(change)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        compare.parse_env(["NOEQUALS"])
    with pytest.raises(SystemExit):
        compare.main(["--a", str(tmp_path)])  # not a tree
