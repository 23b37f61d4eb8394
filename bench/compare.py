"""Two versions of maketrigger's host processes side by side: interleaved rounds of sequential
round trips (`POST /jobs {"target": "noop", "wait": true}`), to tell a change's effect from the
machine's drift.

    python3 bench/compare.py --a /path/to/old/checkout --b . [--rounds 8] [--n 1000]
    python3 bench/compare.py --a . --b . --b-env WORKER_KEEP_RUNS=100000   # a setting

Each stack's controller and worker import `trigger_server` and `worker` from the tree given
(through PYTHONPATH; the servers start in a folder of their own, so the current directory
does not shadow it), with the environment variables given added (not those the harness sets
itself: the tokens, WORKER_VARS, the database and state folders). The rounds alternate which
stack goes first. The stack started second came out up to 0.06 ms faster with the same code
in both (2026-12-07, on a 2-CPU VM), so by default the comparison runs twice, started in both
orders, and the effect given is the mean of the two orders' median differences, which cancels
that bias to first order. Not part of `make bench`; nothing is written but what it prints.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402

FIGURES = ("p50", "mean", "p90", "p99")


def round_figures(latencies: list[float]) -> dict[str, float]:
    """p50, mean, p90 and p99 of one round (durations in seconds), in ms."""
    summary = common.summary_ms(latencies)
    p90 = common.percentile(sorted(s * 1000 for s in latencies), 90)
    return {"p50": summary["p50"], "mean": summary["mean"], "p90": p90, "p99": summary["p99"]}


def differences(a: list[dict], b: list[dict]) -> dict[str, tuple[float, float, float, int]]:
    """Per figure: (A's median over the rounds, B's, the median of the rounds' B - A, in how
    many rounds B was lower)."""
    out = {}
    for name in FIGURES:
        diffs = [y[name] - x[name] for x, y in zip(a, b, strict=True)]
        out[name] = (statistics.median(x[name] for x in a), statistics.median(y[name] for y in b),
                     statistics.median(diffs), sum(d < 0 for d in diffs))
    return out


def order_free(first: dict, second: dict) -> dict[str, float]:
    """The effect of B against A from two comparisons, one with B's stack started second, one
    with it started first: the mean of the two median differences (a bias toward the stack
    started second adds to one and takes from the other)."""
    return {name: (first[name][2] + second[name][2]) / 2 for name in FIGURES}


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise SystemExit(f"--a-env/--b-env take NAME=VALUE, not {pair!r}")
        env[name] = value
    return env


def start(tree: Path, extra: dict[str, str], sizes: common.Sizes, folder: Path,
          stop: ExitStack):
    """A host stack on `tree` (an absolute path), stopped by `stop` even if its start is cut
    short (its processes run in sessions of their own: Ctrl-C does not reach them)."""
    from bench.rows_maketrigger import MaketriggerHost  # (the Docker SDK: only to run)

    workspace = common.make_workspace(folder / "ws", 1000)
    raw = folder / "raw"
    raw.mkdir()
    # The stack's processes inherit the environment.
    with mock.patch.dict(os.environ, {"PYTHONPATH": str(tree), **extra}):
        stack = MaketriggerHost(workspace, sizes, raw)
        stop.callback(stack.__exit__)  # (__enter__ stops what it started only on an Exception)
        return stack.__enter__()


def one_round(stack, n: int, seconds: float) -> dict[str, float]:
    series = common.sequential(stack.roundtrip, n, seconds)
    if series.errors:
        raise RuntimeError(f"round trips failed: {dict(series.errors)}")
    return round_figures(series.seconds)


def compare(stacks: dict[str, tuple[Path, dict]], order: tuple[str, str], rounds: int, n: int,
            seconds: float) -> dict:
    """Start the stacks in `order`, warm them up, then `rounds` interleaved rounds."""
    sizes = common.Sizes(False)
    figures: dict[str, list[dict]] = {"A": [], "B": []}
    with ExitStack() as stop:
        up = {}
        for name in order:
            folder = Path(tempfile.mkdtemp(prefix=f"mtcompare-{name}-"))
            stop.callback(shutil.rmtree, folder, ignore_errors=True)
            up[name] = start(*stacks[name], sizes, folder, stop)
        for name in order:
            one_round(up[name], min(n, 300), seconds)
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                figures[name].append(one_round(up[name], n, seconds))
            print(f"  round {r + 1}: " + " | ".join(
                f"{name} p50 {figures[name][-1]['p50']:.3f} p99 {figures[name][-1]['p99']:.3f}"
                for name in ("A", "B")), flush=True)
    return differences(figures["A"], figures["B"])


def report(title: str, diff: dict, rounds: int) -> None:
    print(title)
    for name, (a, b, d, lower) in diff.items():
        print(f"  {name:4s}: A {a:.3f}  B {b:.3f}  ms; B - A {d:+.3f} (median of the rounds), "
              f"B lower in {lower} of {rounds}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, default=ROOT, help="tree A (default: this one)")
    parser.add_argument("--b", type=Path, default=ROOT, help="tree B (default: this one)")
    parser.add_argument("--a-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--rounds", type=int, default=8,
                        help="an even number: each stack goes first in half of them")
    parser.add_argument("--n", type=int, default=1000, help="round trips per round")
    parser.add_argument("--round-seconds", type=float, default=60.0,
                        help="a round stops after this long, whatever --n says")
    parser.add_argument("--one-order", action="store_true",
                        help="only B started second (half the time; keeps the bias)")
    args = parser.parse_args(argv)
    for tree in (args.a, args.b):
        if not (tree / "trigger_server").is_dir() or not (tree / "worker").is_dir():
            parser.error(f"{tree} is not a maketrigger tree (no trigger_server/ and worker/)")
    if args.rounds < 1 or args.n < 1:
        parser.error("--rounds and --n must be at least 1")
    args.a, args.b = args.a.resolve(), args.b.resolve()  # (before the chdir below)
    # A SIGTERM stops the stacks as Ctrl-C does (their processes are in sessions of their own).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stacks = {"A": (args.a, parse_env(args.a_env)), "B": (args.b, parse_env(args.b_env))}
    print(f"A: {args.a} {stacks['A'][1] or ''}\nB: {args.b} "
          f"{stacks['B'][1] or ''}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mtcompare-") as here:
        os.chdir(here)  # the servers' sys.path begins with the current folder: not a tree
        orders = [("A", "B")] if args.one_order else [("A", "B"), ("B", "A")]
        diffs = []
        for order in orders:
            title = f"B started {'second' if order[0] == 'A' else 'first'}"
            print(f"{title}, rounds:", flush=True)
            diffs.append(compare(stacks, order, args.rounds, args.n, args.round_seconds))
            report(f"{title}, medians of the rounds:", diffs[-1], args.rounds)
        os.chdir("/")
    if len(diffs) == 2:
        effect = order_free(*diffs)
        print("B - A, both orders (mean of the two medians of differences): " + ", ".join(
            f"{name} {effect[name]:+.3f} ms" for name in FIGURES))
    return 0

if __name__ == "__main__":
    sys.exit(main())
