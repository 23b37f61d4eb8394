"""bench/report.py: the relay in containers, measured only in the side-by-side turns, is named
in its table and gives the compose row a reference line against it."""

from bench import report


def results() -> dict:
    row = {"roundtrip_ms": {"p50": 4.0, "p99": 8.0}, "label": "maketrigger (compose stack)"}
    return {
        "rows": {"webhook": {"roundtrip_ms": {"p50": 2.0}, "label": "adnanh/webhook"},
                 "mt-compose": row},
        "side_by_side": {
            "rounds": 3, "per_round": 10,
            "rows": {name: {"p50_ms": p[1], "n": 30, "errors": {}, "turn_p50s_ms": p}
                     for name, p in (("webhook", [2.0, 2.0, 2.0]),
                                     ("mt-compose", [4.0, 4.2, 3.6]),
                                     ("relay-compose", [3.2, 3.0, 3.0]))}},
    }


def test_the_compose_row_gets_a_line_against_the_relay_in_containers():
    sbs = results()["side_by_side"]
    assert report.sbs_only_lines(sbs, "mt-host") == []
    lines = report.sbs_only_lines(sbs, "mt-compose")
    assert len(lines) == 1 and "relay (containers)" in lines[0]["goal"]
    assert lines[0]["measured"] == "1.25x (turns 1.20-1.40x)"  # 4.0/3.2, 4.2/3.0, 3.6/3.0
    assert "that relay alone is 1.50x webhook's p50" in lines[0]["note"]
    assert lines[0]["met"] is None  # a reference, not a goal


def test_the_side_by_side_table_names_the_relay_in_containers():
    text = "\n".join(report.side_by_side_section(results()))
    assert "| bare two-hop Flask relay (containers) | 3.00 |" in text


def test_a_reference_row_that_could_not_start_is_said_to_be_missing():
    res = results()
    del res["side_by_side"]["rows"]["relay-compose"]
    res["side_by_side"]["skipped"] = {"relay-compose": "RuntimeError: no answer"}
    text = "\n".join(report.side_by_side_section(res))
    assert ("Not in the turns: bare two-hop Flask relay (containers), which could not start "
            "(RuntimeError: no answer).") in text
    assert report.sbs_only_lines(res["side_by_side"], "mt-compose") == []
