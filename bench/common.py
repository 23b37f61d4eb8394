"""What every row of the benchmark shares: sizes, the workspace, statistics, /proc meters, the
machine's description, and the sequential and pooled loops (each bounded in count and time)."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 1_000_000  # every MB in the results is 10^6 bytes
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sizes:
    """How much of everything one run does; `--quick` is a smoke run of the same code."""
    quick: bool
    rt: int = 1000            # sequential round trips per row
    stamp: int = 300          # sequential trigger-to-make-started samples per row
    docker_rt: int = 1000     # the same for docker exec (CLI and SDK)
    docker_stamp: int = 100
    run_rt: int = 100         # the same for `docker run --rm` (about 0.5 s each)
    run_stamp: int = 30
    http_load: int = 2000     # requests per HTTP load phase (distinct, identical)
    cmd_load: int = 160       # commands per pooled docker exec phase (about 7/s)
    run_load: int = 32        # containers per pooled `docker run` phase (about 2/s)
    turns: int = 10           # side by side (side_by_side.py): turns of round trips per row
    per_turn: int = 200       # round trips per row and turn
    concurrency: int = 8
    big_bytes: int = 200 * MB
    history: int = 1_000_000
    api_samples: int = 500    # sequential POST /jobs and GET /jobs/<id> per history size
    loop_seconds: float = 150.0   # time bound of every sequential loop
    load_seconds: float = 120.0   # time bound of every load phase
    drain_seconds: float = 300.0  # time bound for queued jobs to end


FULL = Sizes(quick=False)
QUICK = Sizes(quick=True, rt=50, stamp=20, docker_rt=50, docker_stamp=10, run_rt=10,
              run_stamp=5, http_load=200, cmd_load=32, run_load=16, big_bytes=20 * MB,
              history=10_000, api_samples=100, turns=2, per_turn=20, loop_seconds=60,
              load_seconds=60, drain_seconds=120)

MAKEFILE = """\
# The trivial Makefile every row of the benchmark runs (bench/common.py writes it).
N ?= 0
## noop: nothing at all (N makes distinct jobs)
noop:
\t@:
## stamp: print the time the recipe started, in ns since the epoch
stamp:
\t@date +%s%N
## big: print {big_bytes} bytes of log, in lines of 100 (yes: a printer that costs little)
big:
\t@yes {line} | head -c {big_bytes}
## busy: a build that takes a while (cancelled by the bench once it has what it measures)
busy:
\t@sleep 300
.PHONY: noop stamp big busy
"""
STAMP_RE = re.compile(rb"^(\d{16,20})$", re.M)
WORKSPACE_UID, WORKSPACE_GID = 4321, 4322  # as in the e2e tests: builds run as a user


def make_workspace(path: Path, big_bytes: int) -> Path:
    """A folder holding only the bench Makefile, owned by a plain user when we are root."""
    path.mkdir(parents=True, exist_ok=True)
    makefile = path / "Makefile"
    makefile.write_text(MAKEFILE.format(big_bytes=big_bytes, line="x" * 99))
    if os.getuid() == 0:
        for p in (path, makefile):
            os.chown(p, WORKSPACE_UID, WORKSPACE_GID)
    return path


def parse_stamp(output: bytes) -> int:
    """The nanosecond timestamp the `stamp` target printed."""
    found = STAMP_RE.search(output)
    if not found:
        raise ValueError(f"no timestamp in {output[:200]!r}")
    return int(found.group(1))


# --- statistics ---------------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def summary_ms(seconds: list[float]) -> dict:
    """n, min, p50, p95, p99, max and mean of durations, in milliseconds."""
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "min": ms[0], "p50": percentile(ms, 50), "p95": percentile(ms, 95),
            "p99": percentile(ms, 99), "max": ms[-1], "mean": sum(ms) / len(ms)}


# --- /proc ----------------------------------------------------------------------------------
def cpu_seconds(pid: int, children: bool = True) -> float:
    """CPU time of a process, and of its children that it has waited for (make, runc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLK_TCK


def cpu_ticks() -> tuple[int, int]:
    """(idle, all) CPU time of the whole machine in clock ticks, summed over its CPUs, from
    /proc/stat: idle counts iowait too; all is the first eight fields (guest time is already in
    user time)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return values[3] + values[4], sum(values)


def machine_busy_seconds() -> float:
    """Non-idle CPU time of the whole machine, summed over its CPUs."""
    idle, total = cpu_ticks()
    return (total - idle) / CLK_TCK


def wait_for_quiet(idle_wanted: float = 0.9, window: float = 1.0,
                   most: float = 30.0) -> dict:
    """Wait until the machine's CPUs were idle for `idle_wanted` of a `window` (at most `most`
    seconds): what a previous row left using the CPUs (dockerd removing a hundred containers,
    an image build) must not be measured as part of the next one. Work on the disk alone counts
    as idle. Returns how long that took and the idle fraction of the last window; a machine
    that never got quiet is measured anyway, and says so in the results."""
    started = time.monotonic()
    while True:
        idle0, total0 = cpu_ticks()
        time.sleep(window)
        idle1, total1 = cpu_ticks()
        idle = (idle1 - idle0) / max(total1 - total0, 1)
        waited = time.monotonic() - started
        if idle >= idle_wanted or waited >= most:
            return {"waited_s": round(waited, 1), "idle": math.floor(idle * 1000) / 1000,
                    "quiet": idle >= idle_wanted}  # (rounded down: never "90.0%" if below)


def quiet_words(quiet: dict) -> str:
    """How a wait_for_quiet went, for the log."""
    if quiet["quiet"]:
        return f"the machine was quiet after {quiet['waited_s']:.1f} s ({quiet['idle']:.1%} idle)"
    return (f"the machine was not quiet after {quiet['waited_s']:.1f} s ({quiet['idle']:.1%} "
            "idle in the last second): measuring anyway")


def children_cpu_seconds() -> float:
    """CPU time of this harness's own finished children (make, docker CLI, hey)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def status_kib(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))


def child_pids(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def pids_named(name: str) -> list[int]:
    """Pids whose command name is exactly `name` (to read, never to signal)."""
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def cgroup_cpu_seconds(pid: int) -> float:
    """CPU time of the cgroup `pid` is in (cgroup v1 cpuacct or v2 cpu.stat)."""
    with open(f"/proc/{pid}/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    for _, controllers, path in lines:
        if "cpuacct" in controllers.split(","):
            for mount in (controllers, "cpuacct", "cpu,cpuacct"):
                usage = Path("/sys/fs/cgroup", mount, path.lstrip("/"), "cpuacct.usage")
                if usage.exists():
                    return int(usage.read_text()) / 1e9
    for _, controllers, path in lines:
        if controllers == "":
            stat = Path("/sys/fs/cgroup", path.lstrip("/"), "cpu.stat").read_text()
            return int(re.search(r"usage_usec (\d+)", stat).group(1)) / 1e6
    raise RuntimeError(f"no CPU accounting found for the cgroup of {pid}")


@dataclass
class ServerProc:
    """One server-side process whose memory is reported: `service` groups master and serving
    process (PSS master+worker per service)."""
    service: str
    role: str  # "master", "serving" or "daemon"
    pid: int

    @property
    def name(self) -> str:
        return f"{self.service} {self.role}"


def memory_snapshot(procs: list[ServerProc]) -> dict:
    """RSS and PSS of each process now, in MB."""
    out = {}
    for p in procs:
        try:
            out[p.name] = {"rss": status_kib(p.pid) * 1024 / MB, "pss": pss_kib(p.pid) * 1024 / MB}
        except (OSError, StopIteration):
            out[p.name] = {"rss": None, "pss": None}
    return out


class RssSampler:
    """Samples RSS of the given processes every `interval` seconds; keeps each one's peak."""

    def __init__(self, procs: list[ServerProc], interval: float = 0.1):
        self.procs, self.interval = procs, interval
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for p in self.procs:
                try:
                    rss = status_kib(p.pid) * 1024 / MB
                except (OSError, StopIteration):
                    continue
                self.peak[p.name] = max(self.peak.get(p.name, 0.0), rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


class CpuMeter:
    """CPU seconds of named parts (callables returning cumulative seconds), the harness's own
    children, and the whole machine, between `start()` and `stop()`."""

    def __init__(self, parts: dict[str, Callable[[], float]]):
        self.parts = parts
        self.before: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        values = {}
        for name, read in self.parts.items():
            try:
                values[name] = read()
            except (OSError, ValueError, RuntimeError):
                values[name] = float("nan")
        values["_children"] = children_cpu_seconds()
        values["_machine"] = machine_busy_seconds()
        return values

    def start(self) -> None:
        self.before = self._read()

    def stop(self, jobs: int) -> dict:
        """Milliseconds of CPU per job for each part, the server total, and the machine."""
        after = self._read()
        per_job = {k: (after[k] - self.before[k]) * 1000 / max(jobs, 1) for k in after}
        parts = {k: v for k, v in per_job.items() if not k.startswith("_")}
        return {"jobs": jobs, "server_ms_per_job": sum(parts.values()), "parts": parts,
                "harness_children_ms_per_job": per_job["_children"],
                "machine_ms_per_job": per_job["_machine"]}


# --- loops ------------------------------------------------------------------------------------
@dataclass
class Series:
    """Durations of a sequential loop, and how it ended."""
    seconds: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    stopped_by_time: bool = False

    def summary(self) -> dict:
        return {**summary_ms(self.seconds), "errors": sum(self.errors.values()),
                "error_kinds": dict(self.errors.most_common(5)),
                "stopped_by_time": self.stopped_by_time}


def sequential(call: Callable[[int], float | None], count: int, seconds: float) -> Series:
    """`call(i)` up to `count` times or until `seconds` have passed. `call` returns its own
    measured duration (or None to have the wall time of the call taken); an exception is an
    error, counted by its type and message."""
    series = Series()
    deadline = time.monotonic() + seconds
    for i in range(count):
        if time.monotonic() > deadline:
            series.stopped_by_time = True
            break
        started = time.perf_counter()
        try:
            took = call(i)
        except Exception as exc:  # any failure is a figure, not a crash of the harness
            series.errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
            continue
        series.seconds.append(took if took is not None else time.perf_counter() - started)
    return series


def pooled(call: Callable[[int], None], count: int, concurrency: int, seconds: float) -> dict:
    """`count` calls on `concurrency` threads, none started after `seconds`: completed calls
    per second, latencies and errors."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    errors: Counter = Counter()
    lock = threading.Lock()

    def one(i: int) -> None:
        if time.monotonic() > deadline:
            with lock:
                errors["not started: time bound reached"] += 1
            return
        started = time.perf_counter()
        try:
            call(i)
        except Exception as exc:
            with lock:
                errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
            return
        with lock:
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(count)))
    wall = time.perf_counter() - started
    return {"tool": f"thread pool of {concurrency}", "requests": count, "concurrency": concurrency,
            "ok": len(latencies), "errors": sum(errors.values()),
            "error_kinds": dict(errors.most_common(5)), "wall_s": wall,
            "accepted_per_s": len(latencies) / wall, "completed_per_s": len(latencies) / wall,
            "latency_ms": summary_ms(latencies)}


def run_quiet(argv: list[str], timeout: float = 60) -> None:
    """Run a command for its exit status only (no pipes to read): an error unless it is 0."""
    code = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=timeout).returncode
    if code != 0:
        raise RuntimeError(f"exit {code}")


def run_checked(argv: list[str], timeout: float = 60, **kw) -> bytes:
    """Run a command; its stdout, or an error naming its status and stderr."""
    done = subprocess.run(argv, capture_output=True, timeout=timeout, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr[-200:].decode(errors='replace')}")
    return done.stdout


# --- the machine and the tools ------------------------------------------------------------------
def _first_line(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else None


def _dpkg_version(package: str) -> str | None:
    return _first_line(["dpkg-query", "-W", "-f=${Version}", package])


def _py_version(module: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:
        return None


def machine() -> dict:
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal:")))
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f
                      if line.startswith("model name")), platform.processor())
    os_name = ""
    if os.path.exists("/etc/os-release"):
        with open("/etc/os-release") as f:
            release = dict(line.rstrip().split("=", 1) for line in f if "=" in line)
        os_name = release.get("PRETTY_NAME", "").strip('"')
    return {"nproc": os.cpu_count(), "memory_gib": round(mem_kib / 1024 / 1024, 1),
            "kernel": platform.release(), "cpu_model": model, "os": os_name,
            "python": platform.python_version(), "python_build": python_build(),
            "loadavg_at_start": os.getloadavg()}


def python_build() -> str:
    """Which interpreter runs the client and the host rows' servers, and how it was built: an
    interpreter linked to a shared libpython (a `pyenv install`, without PGO/LTO by default) runs
    these servers markedly slower than a distribution's (Debian's is PGO+LTO and static)."""
    with open("/proc/self/maps") as f:
        shared = any("libpython" in line for line in f)
    return (f"{os.path.realpath(sys.executable)}, {platform.python_implementation()}, "
            f"libpython {'shared' if shared else 'static'}")


def tools(docker_cli: str) -> dict:
    docker_versions = _first_line([docker_cli, "version", "--format",
                                   "{{.Client.Version}} {{.Server.Version}}"]) or ""
    client, _, engine = docker_versions.partition(" ")
    return {
        "make": _first_line(["make", "--version"]),
        "webhook": _first_line(["webhook", "-version"]),
        "hey": _dpkg_version("hey"),
        "docker_cli": client or None, "docker_engine": engine or None,
        "docker_compose": _first_line(["docker-compose", "version", "--short"]),
        "docker_sdk": _py_version("docker"), "gunicorn": _py_version("gunicorn"),
        "flask": _py_version("flask"), "requests": _py_version("requests"),
        "matplotlib": _py_version("matplotlib"), "sqlite": _sqlite_version(),
    }


def _sqlite_version() -> str:
    import sqlite3
    return sqlite3.sqlite_version


def product_state() -> dict:
    """Which maketrigger was measured: the commit, and the product files changed since it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True,
                              text=True).stdout.rstrip()
    changed = [line[3:] for line in git("status", "--porcelain", "--", "trigger_server",
                                        "worker", "docker", "Dockerfile.server",
                                        "Dockerfile.worker", "pyproject.toml").splitlines()]
    return {"commit": git("rev-parse", "HEAD"), "subject": git("log", "-1", "--format=%s"),
            "uncommitted_product_files": changed}


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
