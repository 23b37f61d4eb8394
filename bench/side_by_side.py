"""Round trips of several rows taken in turns, for the goal that compares two rows' round trips
(maketrigger's p50 against webhook's).

Each row's own block of round trips (measure.py) comes minutes after the other rows', and the
speed of this shared machine drifts by several percent within minutes. Here every row is up at
once and gets `per_round` sequential round trips in turn, for `rounds` turns, the order reversed
every other turn: a drift slows every row alike, and the ratio of the p50s is the rows' own.
"""

from __future__ import annotations

import logging
import statistics

from bench.common import sequential

log = logging.getLogger(__name__)
WARMUP = 5


def interleave(rows: dict, rounds: int, per_round: int, seconds: float) -> dict:
    """`rows`: name -> a row (measure.py) whose servers are up. The p50 of all of each row's
    round trips, and each turn's p50, in ms; failed round trips are counted, not timed."""
    for row in rows.values():
        for i in range(WARMUP):
            row.roundtrip(i)
    samples: dict[str, list[float]] = {name: [] for name in rows}
    turns: dict[str, list[float]] = {name: [] for name in rows}
    errors: dict[str, dict[str, int]] = {name: {} for name in rows}
    order = list(rows)
    for turn in range(rounds):
        for name in order if turn % 2 == 0 else order[::-1]:
            series = sequential(rows[name].roundtrip, per_round, seconds)
            samples[name] += series.seconds
            if series.seconds:
                turns[name].append(round(statistics.median(series.seconds) * 1000, 3))
            for error, count in series.errors.items():
                errors[name][error] = errors[name].get(error, 0) + count
        log.info("side by side, turn %d of %d: %s", turn + 1, rounds,
                 ", ".join(f"{n} {turns[n][-1]:.2f} ms" for n in order if turns[n]))
    return {"rounds": rounds, "per_round": per_round, "rows": {
        name: {"p50_ms": round(statistics.median(samples[name]) * 1000, 3)
               if samples[name] else None,
               "n": len(samples[name]), "turn_p50s_ms": turns[name], "errors": errors[name]}
        for name in order}}
