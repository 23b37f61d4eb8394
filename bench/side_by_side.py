"""Round trips of several rows taken in turns, for the goal that compares two rows' round trips
(maketrigger's p50 against webhook's).

Each row's own block of round trips (measure.py) comes minutes after the other rows', and the
speed of this shared machine drifts by several percent within minutes. Here the rows are up at
once and each gets `per_round` sequential round trips in turn, for `rounds` turns. A ratio is
taken within each turn (report.turn_ratio), so that a drift over time weighs on both of its
rows alike, to first order. The order rotates from turn to turn, and runs backwards in every
other set of rotations, so each row has every place in a turn and both neighbours equally often.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter

from bench.common import quiet_words, sequential, wait_for_quiet

log = logging.getLogger(__name__)
WARMUP = 5


def orders(names: list[str], rounds: int) -> list[list[str]]:
    """The rows' order in each turn: rotated by one each turn, reversed in every other cycle."""
    out = []
    for turn in range(rounds):
        k = turn % len(names)
        order = names[k:] + names[:k]
        out.append(order[::-1] if (turn // len(names)) % 2 else order)
    return out


def interleave(rows: dict, rounds: int, per_round: int, seconds: float) -> dict:
    """`rows`: name -> a row (measure.py) whose servers are up. For each row, the p50 of all of
    its round trips and the p50 of each turn (None for a turn without one), in ms; failed round
    trips are counted, not timed."""
    for row in rows.values():
        for i in range(WARMUP):
            row.roundtrip(i)
    quiet = wait_for_quiet()  # five sets of servers have just started
    log.info("side by side: %s", quiet_words(quiet))
    samples: dict[str, list[float]] = {name: [] for name in rows}
    turns: dict[str, list[float | None]] = {name: [] for name in rows}
    errors: dict[str, Counter] = {name: Counter() for name in rows}
    stopped = set()
    for turn, order in enumerate(orders(list(rows), rounds)):
        for name in order:
            series = sequential(rows[name].roundtrip, per_round, seconds)
            samples[name] += series.seconds
            turns[name].append(round(statistics.median(series.seconds) * 1000, 3)
                               if series.seconds else None)
            errors[name] += series.errors
            if series.stopped_by_time:
                stopped.add(name)
        log.info("side by side, turn %d of %d: %s", turn + 1, rounds,
                 ", ".join(f"{n} {turns[n][-1]} ms" for n in order))
    return {"rounds": rounds, "per_round": per_round, "quiet_before": quiet, "rows": {
        name: {"p50_ms": round(statistics.median(samples[name]) * 1000, 3)
               if samples[name] else None,
               "n": len(samples[name]), "turn_p50s_ms": turns[name], "errors": dict(errors[name]),
               "stopped_by_time": name in stopped}
        for name in rows}}
