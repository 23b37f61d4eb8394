"""maketrigger against what users would pick instead, in one run, on one trivial Makefile.

    python3 bench/run.py                 # the full run (about 15 minutes on 2 CPUs)
    python3 bench/run.py --quick         # a smoke run of the same code (about 3 minutes)
    python3 bench/run.py --rows floor,webhook,mt-host

Rows: floor (fork/exec make), webhook (adnanh/webhook), relay (two bare Flask hops), mt-host
(maketrigger as processes), log-stream and history (maketrigger-only figures on mt-host),
docker-exec-cli, docker-exec-sdk, docker-run, mt-compose (the compose stack); then the round
trips of the floor, webhook, the relay and the maketrigger rows side by side
(bench/side_by_side.py), which the round-trip goal compares. Writes
bench/results/<timestamp>/results.md, results.json and chart.png; raw samples, hey's CSVs and
the servers' logs go to raw/.
Talks only to 127.0.0.1 and to containers it made; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common, report  # noqa: E402
from bench.measure import measure  # noqa: E402

log = logging.getLogger("bench")
ROWS = ("floor", "webhook", "relay", "mt-host", "log-stream", "history", "docker-exec-cli",
        "docker-exec-sdk", "docker-run", "mt-compose")
TOOLS = {"floor": ["make"], "webhook": ["webhook", "hey"], "relay": ["hey"], "mt-host": ["hey"],
         "mt-compose": ["hey"], "docker-exec-cli": ["docker"], "docker-run": ["docker"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: small counts")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated, from {', '.join(ROWS)} (default: all)")
    parser.add_argument("--out", type=Path, help="results folder (default "
                        "bench/results/<timestamp>, with -quick for --quick)")
    parser.add_argument("--rebuild-images", action="store_true",
                        help="run `make images` even if the images exist (mt-compose)")
    args = parser.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(args.rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    return args


def check_tools(rows: list[str]) -> None:
    missing = {tool for row in rows for tool in TOOLS.get(row, []) if not shutil.which(tool)}
    if missing:
        sys.exit(f"bench: missing {', '.join(sorted(missing))}: run bench/deps.sh "
                 "(apt-get install -y hey webhook; scripts/ci-docker.sh for Docker)")


def ensure_images(raw: Path, rebuild: bool) -> dict:
    """The compose stack's images: built with `make images` if missing (or asked to)."""
    import docker
    import docker.errors

    names = {"server": os.environ.get("TRIGGER_SERVER_IMAGE", "maketrigger-server:local"),
             "worker": os.environ.get("TRIGGER_WORKER_IMAGE", "maketrigger-worker:local")}
    client = docker.from_env(timeout=120)
    try:
        def present() -> bool:
            try:
                for name in names.values():
                    client.images.get(name)
                return True
            except docker.errors.ImageNotFound:
                return False

        built = False
        if rebuild or not present():
            log.info("building the images: make images (log: %s)", raw / "make-images.log")
            with open(raw / "make-images.log", "wb") as out:
                done = subprocess.run(["make", "images"], cwd=ROOT, stdout=out,
                                      stderr=subprocess.STDOUT, timeout=1800)
            if done.returncode != 0:
                raise RuntimeError(f"make images failed ({done.returncode}); see "
                                   f"{raw / 'make-images.log'}")
            built = True
        info = {}
        for role, name in names.items():
            image = client.images.get(name)
            info[role] = {"tag": name, "id": image.short_id, "created": image.attrs["Created"]}
        return {**info, "built_by_this_run": built}
    finally:
        client.close()


def ensure_base_image(raw: Path) -> None:
    """The stand-in image the Docker rows run (rows_docker.IMAGE), as on a fresh machine, where
    no registry can be reached and nothing else has built it yet: scripts/base-image.sh builds
    it, or keeps it if present."""
    from bench.rows_docker import IMAGE

    log.info("the stand-in base image %s (log: %s)", IMAGE, raw / "base-image.log")
    with open(raw / "base-image.log", "wb") as out:
        done = subprocess.run(["scripts/base-image.sh", "build", IMAGE], cwd=ROOT, stdout=out,
                              stderr=subprocess.STDOUT, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/base-image.sh failed ({done.returncode}); see "
                           f"{raw / 'base-image.log'}")


class Run:
    """One benchmark run: the rows asked for, in an order that keeps Docker's work last."""

    def __init__(self, args: argparse.Namespace, out: Path):
        self.args, self.out = args, out
        self.sizes = common.QUICK if args.quick else common.FULL
        self.raw = out / "raw"
        self.run_id = out.name.replace("_", "-").lower()
        self.results: dict = {"rows": {}, "mt_only": {}}
        self.samples: dict[str, dict] = {}

    def want(self, *rows: str) -> bool:
        return any(r in self.args.rows for r in rows)

    def row(self, name: str, make_row) -> None:
        """Measure one row inside its own setup and teardown; a failure is recorded, and the
        other rows still run."""
        if not self.want(name):
            return
        log.info("=== %s", name)
        load = os.getloadavg()
        started = time.perf_counter()
        try:
            with make_row() as row:
                figures = measure(row, self.sizes, self.raw)
        except Exception as exc:
            log.exception("%s failed", name)
            self.results["rows"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                          "label": name}
            return
        self.samples[name] = figures.pop("_samples")
        figures.update(loadavg_before=load, took_s=time.perf_counter() - started)
        self.results["rows"][name] = figures

    def mt_host(self, workspace: Path) -> None:
        from bench import mt_extra
        from bench.rows_maketrigger import MaketriggerHost

        if not self.want("mt-host", "log-stream", "history"):
            return
        if self.want("mt-host"):
            # one set of processes for the common figures, then the maketrigger-only ones
            self._mt_host_all(workspace, mt_extra, MaketriggerHost)
            return
        with MaketriggerHost(workspace, self.sizes, self.raw) as row:
            self._extras(row, mt_extra)

    def _mt_host_all(self, workspace: Path, mt_extra, cls) -> None:
        log.info("=== mt-host")
        load = os.getloadavg()
        started = time.perf_counter()
        try:
            with cls(workspace, self.sizes, self.raw) as row:
                try:
                    figures = measure(row, self.sizes, self.raw)
                    self.samples["mt-host"] = figures.pop("_samples")
                    figures.update(loadavg_before=load, took_s=time.perf_counter() - started)
                    self.results["rows"]["mt-host"] = figures
                except Exception as exc:
                    log.exception("mt-host failed")
                    self.results["rows"]["mt-host"] = {"error": f"{type(exc).__name__}: {exc}",
                                                       "label": "mt-host"}
                self._extras(row, mt_extra)
        except Exception as exc:
            log.exception("mt-host could not start")
            self.results["rows"]["mt-host"] = {"error": f"{type(exc).__name__}: {exc}",
                                               "label": "mt-host"}

    def _extras(self, row, mt_extra) -> None:
        for name, key, figure in (("log-stream", "log_stream", mt_extra.log_stream),
                                  ("history", "history", mt_extra.history)):
            if not self.want(name):
                continue
            log.info("=== %s", name)
            try:
                self.results["mt_only"][key] = figure(row, self.sizes)
            except Exception as exc:
                log.exception("%s failed", name)
                self.results["mt_only"][key] = {"error": f"{type(exc).__name__}: {exc}"}

    def docker_rows(self, workspace: Path) -> None:
        from bench.rows_docker import DockerExecCli, DockerExecSdk, DockerRun, LongLived

        if not self.want("docker-exec-cli", "docker-exec-sdk", "docker-run"):
            return
        try:
            ensure_base_image(self.raw)
        except Exception as exc:
            log.exception("no stand-in base image")
            for name in ("docker-exec-cli", "docker-exec-sdk", "docker-run"):
                if self.want(name):
                    self.results["rows"][name] = {"error": str(exc), "label": name}
            return
        if self.want("docker-exec-cli", "docker-exec-sdk"):
            try:
                with LongLived(workspace, self.run_id) as box:
                    self.row("docker-exec-cli", lambda: contextlib.nullcontext(
                        DockerExecCli(box, self.sizes)))
                    self.row("docker-exec-sdk", lambda: contextlib.nullcontext(
                        DockerExecSdk(box, self.sizes)))
            except Exception as exc:
                log.exception("the long-lived container failed")
                for name in ("docker-exec-cli", "docker-exec-sdk"):
                    self.results["rows"].setdefault(
                        name, {"error": f"{type(exc).__name__}: {exc}", "label": name})
        self.row("docker-run", lambda: DockerRun(workspace, self.sizes, self.run_id))

    def mt_compose(self, workspace: Path) -> None:
        from bench.rows_maketrigger import MaketriggerCompose

        if not self.want("mt-compose"):
            return
        try:
            self.results["images"] = ensure_images(self.raw, self.args.rebuild_images)
        except Exception as exc:
            log.exception("no images")
            self.results["rows"]["mt-compose"] = {"error": str(exc), "label": "mt-compose"}
            return
        self.row("mt-compose",
                 lambda: MaketriggerCompose(workspace, self.sizes, self.raw, self.run_id))

    def side_by_side(self, workspace: Path) -> None:
        """The host rows and the maketrigger rows up at once, their round trips taken in turns
        (bench/side_by_side.py): the round-trip ratio goal compares these; the floor and the
        relay come along as controls and for the relay's reference lines; with the compose row
        comes the relay as two containers (rows_docker.RelayContainers), its floor in Docker."""
        from bench import side_by_side
        from bench.rows_docker import RelayContainers
        from bench.rows_local import Floor, Relay, Webhook
        from bench.rows_maketrigger import MaketriggerCompose, MaketriggerHost

        ok = {n for n in ("floor", "webhook", "relay", "mt-host", "mt-compose")
              if "error" not in self.results["rows"].get(n, {"error": "not run"})}
        if {"relay", "mt-compose"} <= ok:
            ok.add("relay-compose")
        if "webhook" not in ok or not ok & {"mt-host", "mt-compose"}:
            return
        log.info("=== side by side: %s", ", ".join(sorted(ok)))
        raw = self.raw / "side-by-side"  # the servers' logs, apart from their own rows'
        makers = {
            "floor": lambda: Floor(workspace, self.sizes),
            "webhook": lambda: Webhook(workspace, self.sizes, raw),
            "relay": lambda: Relay(workspace, self.sizes, raw),
            "mt-host": lambda: MaketriggerHost(workspace, self.sizes, raw),
            "mt-compose": lambda: MaketriggerCompose(workspace, self.sizes, raw,
                                                     self.run_id + "-sbs"),
            "relay-compose": lambda: RelayContainers(
                workspace, self.run_id, self.results["images"]["worker"]["tag"], raw)}
        optional = set(report.SBS_ONLY)  # references only: the turns go on without them
        skipped = {}
        try:
            raw.mkdir(parents=True, exist_ok=True)
            with contextlib.ExitStack() as stack:
                rows = {}
                for name, make in makers.items():
                    if name not in ok:
                        continue
                    try:
                        rows[name] = stack.enter_context(make())
                    except Exception as exc:
                        if name not in optional:
                            raise
                        log.exception("side by side: %s could not start; going on without",
                                      name)
                        skipped[name] = f"{type(exc).__name__}: {exc}"
                self.results["side_by_side"] = {
                    **side_by_side.interleave(rows, self.sizes.turns, self.sizes.per_turn,
                                              self.sizes.loop_seconds),
                    "skipped": skipped}
        except Exception as exc:
            if "side_by_side" in self.results:  # measured: only the teardown failed
                log.exception("side by side: stopping the rows failed")
            else:
                log.exception("side by side failed")
                self.results["side_by_side"] = {"error": f"{type(exc).__name__}: {exc}"}

    def go(self) -> dict:
        from bench.rows_local import Floor, Relay, Webhook

        started = time.perf_counter()
        self.results.update(
            started_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine=common.machine(), tools=common.tools(os.environ.get("DOCKER", "docker")),
            product=common.product_state(), sizes=vars(self.sizes), rows_asked=self.args.rows)
        tmp = Path(tempfile.mkdtemp(prefix="mtbench-ws-"))
        try:
            workspace = common.make_workspace(tmp / "w", self.sizes.big_bytes)
            self.row("floor", lambda: Floor(workspace, self.sizes))
            self.row("webhook", lambda: Webhook(workspace, self.sizes, self.raw))
            self.row("relay", lambda: Relay(workspace, self.sizes, self.raw))
            self.mt_host(workspace)
            self.docker_rows(workspace)
            self.mt_compose(workspace)
            self.side_by_side(workspace)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.results["machine"]["loadavg_at_end"] = os.getloadavg()
        self.results["took_s"] = time.perf_counter() - started
        self.results["chart"] = "chart.png"
        self.results["goals"] = report.goals(self.results)
        return self.results

    def write(self) -> None:
        common.write_json(self.out / "results.json", self.results)
        try:
            from bench import chart
            chart.draw(self.results, self.samples, self.out / "chart.png")
        except ImportError:
            log.warning("no matplotlib (pip install -r bench/requirements.txt): no chart")
            self.results["chart"] = "(not drawn: no matplotlib)"
        except Exception as exc:
            log.exception("the chart failed")
            self.results["chart"] = f"(not drawn: {exc})"
        (self.out / "results.md").write_text(report.markdown(self.results))


def stop_on_sigterm() -> None:
    """SIGTERM ends the run like Ctrl-C: every teardown still runs."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools(args.rows)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    out = args.out or ROOT / "bench" / "results" / stamp
    (out / "raw").mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        handlers=[logging.StreamHandler(),
                                  logging.FileHandler(out / "raw" / "run.log")])
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        os.environ.pop(var, None)
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    stop_on_sigterm()
    if "libpython shared" in common.python_build():
        log.warning("%s links a shared libpython (pyenv's default build, without PGO/LTO): the "
                    "host rows' Python servers run slower on it than on a distribution's "
                    "python3; see bench/README.md, 'Which Python'", sys.executable)
    run = Run(args, out)
    run.go()
    run.write()
    print(f"\nresults: {out / 'results.md'}")
    met = [g for g in run.results["goals"] if g["met"] is not None]
    print(f"goals met: {sum(g['met'] for g in met)} of {len(met)}")
    for g in run.results["goals"]:
        state = {True: "met", False: "MISSED", None: "n/a"}[g["met"]]
        print(f"  {state:6} {g['variant']:10} {g['goal']}: {g['measured']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
