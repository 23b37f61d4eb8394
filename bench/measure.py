"""The figures every row gets, measured the same way for each: round trip, trigger-to-make-started,
throughput of distinct and of identical triggers, CPU per job, idle and loaded memory.

A row is an object with `name`, `label`, `kind` ("sync": the answer comes when make has
ended, or "async": the trigger is accepted and the job ends later), the counts it runs
(`rt_count`, `stamp_count`, `load_count`), and these methods:

    roundtrip(i)      one sequential trigger, returning when make has ended (raises on failure)
    stamp(i)          seconds from the client's send time to the `stamp` target's timestamp
    load(mode, count, concurrency, seconds, raw_dir)
                      a bounded burst, mode "distinct" or "identical"; a dict as
                      common.pooled() or httpload.hey() return
    settle(mode, since)  (async rows) wait until the burst's jobs ended; their count and states
    mark()            (async rows) where the job history stands before a burst
    processes()       the server processes (common.ServerProc) whose memory is reported
    cpu_parts()       name -> callable returning cumulative CPU seconds of a server part
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from bench.common import (
    CpuMeter,
    RssSampler,
    Sizes,
    memory_snapshot,
    quiet_words,
    sequential,
    wait_for_quiet,
    write_json,
)

log = logging.getLogger(__name__)
WARMUP = 5


def measure(row, sizes: Sizes, raw: Path) -> dict:
    """Every common figure of one row; the raw samples go to `raw`."""
    log.info("%s: warming up", row.name)
    for i in range(WARMUP):
        row.roundtrip(i)
    quiet = wait_for_quiet()  # (a second at least: the warm-up's work ends too)
    log.info("%s: %s", row.name, quiet_words(quiet))
    procs = row.processes()
    idle = memory_snapshot(procs)

    log.info("%s: %d sequential round trips", row.name, row.rt_count)
    rt = sequential(row.roundtrip, row.rt_count, sizes.loop_seconds)
    log.info("%s: round trip p50 %.2f ms", row.name, rt.summary().get("p50", float("nan")))
    log.info("%s: %d trigger-to-make-started samples", row.name, row.stamp_count)
    started = sequential(row.stamp, row.stamp_count, sizes.loop_seconds)

    loads = {}
    with RssSampler(procs) as sampler:
        for mode in ("distinct", "identical"):
            log.info("%s: %s burst of %d", row.name, mode, row.load_count)
            meter = CpuMeter(row.cpu_parts())
            mark = row.mark() if row.kind == "async" else None
            meter.start()
            t0 = time.perf_counter()
            result = row.load(mode, row.load_count, sizes.concurrency, sizes.load_seconds,
                              raw / f"{row.name}-{mode}.csv")
            if row.kind == "async":
                result.update(row.settle(mark, t0, sizes.drain_seconds))
            else:
                result["jobs_run"] = result["ok"]
                result["completed_per_s"] = result["accepted_per_s"]
            # identical triggers may coalesce: their CPU is per trigger, distinct ones' per job
            per = result["jobs_run"] if mode == "distinct" else result["requests"]
            result["cpu"] = {"per": "job" if mode == "distinct" else "trigger",
                             **meter.stop(per)}
            log.info("%s: %s: %.0f accepted/s, %.1f completed/s, %d errors", row.name, mode,
                     result["accepted_per_s"], result["completed_per_s"], result["errors"])
            loads[mode] = result
    loaded = {name: {"rss_peak": peak} for name, peak in sampler.peak.items()}
    after = memory_snapshot(procs)

    extra = row.extra_figures() if hasattr(row, "extra_figures") else {}
    write_json(raw / f"{row.name}-samples.json",
               {"roundtrip_s": rt.seconds, "make_started_s": started.seconds})
    return {
        "label": row.label, "kind": row.kind,
        "roundtrip_ms": rt.summary(), "make_started_ms": started.summary(),
        "load": loads, "quiet_before": quiet,
        "memory": {"idle": idle, "loaded_peak": loaded, "after_load": after,
                   "pss_per_service_idle": pss_per_service(procs, idle)},
        **extra,
        "_samples": {"roundtrip_s": rt.seconds, "make_started_s": started.seconds},
    }


def pss_per_service(procs, snapshot: dict) -> dict:
    """PSS of master + serving process, summed per service, in MB."""
    out: dict[str, float] = {}
    for p in procs:
        pss = snapshot.get(p.name, {}).get("pss")
        if pss is not None:
            out[p.service] = out.get(p.service, 0.0) + pss
    return out
