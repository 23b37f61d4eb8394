"""Where maketrigger's time goes: py-spy samples of the serving processes (controller and
worker, on the host) during sequential round trips and during a distinct burst.

    python3 bench/profile.py [--seconds 15] [--out DIR]

Not part of the measured run (sampling slows the processes down). Writes py-spy's collapsed
stacks and flame graphs (SVG) to DIR (default bench/results/profile-<timestamp>/raw, ignored by
git) and prints the functions with the most samples that hold the GIL (py-spy --gil: Python
running, not waiting), in the function itself (self) and anywhere below it (total).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.rows_maketrigger import MaketriggerHost  # noqa: E402

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """`func (path/to/module.py:12)` -> `module.py:func`."""
    m = FRAME.match(frame.strip())
    return f"{Path(m['file']).name}:{m['func']}" if m else frame.strip()


def summarise(collapsed: Path, top: int = 15) -> str:
    """The top functions of py-spy's raw (collapsed) output, by self and by total samples."""
    own, total, samples = Counter(), Counter(), 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [frame_name(f) for f in stack.split(";")]
        samples += int(count)
        own[frames[-1]] += int(count)
        for name in set(frames):
            total[name] += int(count)
    if not samples:
        return f"{collapsed.name}: no samples\n"
    lines = [f"{collapsed.name}: {samples} samples holding the GIL"]
    for title, counter in (("self", own), ("total", total)):
        lines.append(f"  by {title}:")
        lines += [f"    {n * 100 / samples:5.1f}%  {name}" for name, n in counter.most_common(top)]
    return "\n".join(lines) + "\n"


def record(pids: dict[str, int], seconds: float, out: Path, phase: str) -> list:
    """Start py-spy on each pid for `seconds`: raw stacks and a flame graph."""
    spies = []
    for name, pid in pids.items():
        for fmt, ext in (("raw", "txt"), ("flamegraph", "svg")):
            spies.append(subprocess.Popen(
                ["py-spy", "record", "--gil", "-p", str(pid), "-d", str(int(seconds)), "-r", "100",
                 "-f", fmt, "-o", str(out / f"profile-{phase}-{name}.{ext}")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1)  # py-spy attaches
    return spies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "bench" / "results" / f"profile-{stamp}" / "raw"
    out.mkdir(parents=True, exist_ok=True)
    sizes = common.QUICK
    with tempfile.TemporaryDirectory(prefix="mtbench-prof-") as tmp:
        workspace = common.make_workspace(Path(tmp) / "w", sizes.big_bytes)
        with MaketriggerHost(workspace, sizes, out) as row:
            for i in range(10):
                row.roundtrip(i)
            pids = {p.service: p.pid for p in row.processes() if p.role == "serving"}
            report = []
            spies = record(pids, args.seconds, out, "roundtrip")
            rt = common.sequential(row.roundtrip, 100_000, args.seconds - 2)
            for spy in spies:
                spy.wait(args.seconds + 60)
            report.append(f"round trips while sampled: {rt.summary()}")

            spies = record(pids, args.seconds, out, "distinct")
            burst: dict = {}
            thread = threading.Thread(target=lambda: burst.update(row.load(
                "distinct", 4000, sizes.concurrency, args.seconds - 2, out / "p.csv")))
            thread.start()
            thread.join(args.seconds + 30)
            for spy in spies:
                spy.wait(args.seconds + 60)
            report.append(f"distinct burst while sampled: {burst.get('accepted_per_s', 0):.0f} "
                          "accepted/s")
            for phase in ("roundtrip", "distinct"):
                for name in pids:
                    path = out / f"profile-{phase}-{name}.txt"
                    if path.exists():
                        report.append(summarise(path))
            row.settle(0, time.perf_counter(), sizes.drain_seconds)
    text = "\n".join(report)
    (out / "profile-summary.txt").write_text(text)
    print(text)
    print(f"flame graphs: {out}/profile-*.svg")


if __name__ == "__main__":
    main()
