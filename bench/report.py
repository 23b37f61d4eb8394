"""results.json -> the goals (measured, target, met) and results.md.

    python3 bench/report.py bench/results/<timestamp>/results.json   # rewrite results.md
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

MT_ROWS = ("mt-host", "mt-compose")
ROW_ORDER = ("floor", "webhook", "relay", "mt-host", "mt-compose", "docker-exec-cli",
             "docker-exec-sdk", "docker-run")
# Rows of the side-by-side turns only (bench/run.py, side_by_side), with the relay row each
# stands beside.
SBS_ONLY = {"relay-compose": ("bare two-hop Flask relay (containers)", "mt-compose")}


def _get(d: dict, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _goal(goal: str, variant: str, measured: str, target: str, met: bool | None,
          note: str = "") -> dict:
    return {"goal": goal, "variant": variant, "measured": measured, "target": target,
            "met": met, "note": note}


def _ratio_goal(goal, variant, ours, theirs, target_ratio, unit="ms", higher_is_better=False):
    """ours/theirs (latency: theirs/ours is the speed-up)."""
    if ours is None or theirs is None or not ours or not theirs:
        return _goal(goal, variant, "not measured", f"{target_ratio:g}x", None)
    if higher_is_better:
        ratio = ours / theirs
        text = f"{ratio:.2f}x ({ours:.1f} vs {theirs:.1f} {unit})"
    else:
        ratio = theirs / ours
        text = f"{ratio:.2f}x ({theirs:.2f} vs {ours:.2f} {unit})"
    return _goal(goal, variant, text, f">= {target_ratio:g}x", ratio >= target_ratio)


def turn_ratio(sbs: dict, row: str, base: str) -> tuple[float, float, float, int] | None:
    """`row`'s round trip p50 over `base`'s, turn by turn (side_by_side.py): the median of
    the turns' ratios, their lowest and highest, and how many turns had both."""
    if not sbs or "error" in sbs:
        return None
    mine, theirs = _get(sbs, "rows", row, "turn_p50s_ms"), _get(sbs, "rows", base,
                                                                "turn_p50s_ms")
    if not mine or not theirs:
        return None
    ratios = [a / b for a, b in zip(mine, theirs, strict=False) if a and b]
    if not ratios:
        return None
    return statistics.median(ratios), min(ratios), max(ratios), len(ratios)


def sbs_only_lines(sbs: dict, v: str) -> list[dict]:
    """Row `v`'s reference lines against the side-by-side-only rows that stand beside it."""
    out = []
    for name, (label, beside) in SBS_ONLY.items():
        to_it, it_web = turn_ratio(sbs, v, name), turn_ratio(sbs, name, "webhook")
        if beside == v and to_it and it_web:
            out.append(_goal(
                f"(reference, not a goal) round trip p50 against the {label}", v,
                f"{to_it[0]:.2f}x (turns {to_it[1]:.2f}-{to_it[2]:.2f}x)", "-", None,
                f"side by side; that relay alone is {it_web[0]:.2f}x webhook's p50: "
                "the floor of this design in Docker"))
    return out


def goals(results: dict) -> list[dict]:
    """Every goal of issue 7, for each maketrigger row that was measured."""
    rows = results.get("rows", {})
    out = []
    web_p50 = _get(rows, "webhook", "roundtrip_ms", "p50")
    relay_p50 = _get(rows, "relay", "roundtrip_ms", "p50")
    sdk_p50 = _get(rows, "docker-exec-sdk", "roundtrip_ms", "p50")
    sdk_tput = _get(rows, "docker-exec-sdk", "load", "distinct", "completed_per_s")
    run_p50 = _get(rows, "docker-run", "roundtrip_ms", "p50")
    accept_ceiling = _get(rows, "relay", "accept_only", "accepted_per_s")
    sbs = results.get("side_by_side") or {}
    for v in MT_ROWS:
        row = rows.get(v)
        if not row or "error" in row:
            continue
        p50, p99 = _get(row, "roundtrip_ms", "p50"), _get(row, "roundtrip_ms", "p99")
        turns = turn_ratio(sbs, v, "webhook")
        if turns:  # the rows measured in the same minutes, turn by turn
            ratio, low, high, n = turns
            mine, theirs = _get(sbs, "rows", v, "p50_ms"), _get(sbs, "rows", "webhook", "p50_ms")
            out.append(_goal(
                "round trip p50 <= 2x webhook's p50", v,
                f"{ratio:.2f}x ({mine:.2f} vs {theirs:.2f} ms; turns {low:.2f}-{high:.2f}x)",
                "<= 2x", ratio <= 2,
                f"side by side: the median of {n} turns' ratios, {sbs['per_round']} round "
                "trips of each row in each turn (section below)"))
            if p50 and web_p50:
                out.append(_goal(
                    "(reference, not a goal) round trip p50 against webhook's, each row in "
                    "its own block of the run", v,
                    f"{p50 / web_p50:.2f}x ({p50:.2f} vs {web_p50:.2f} ms)", "-", None))
        elif p50 and web_p50:
            ratio = p50 / web_p50
            out.append(_goal("round trip p50 <= 2x webhook's p50", v,
                             f"{ratio:.2f}x ({p50:.2f} vs {web_p50:.2f} ms)", "<= 2x",
                             ratio <= 2, "each row in its own block of the run (no side by "
                             "side figures)"))
        else:
            out.append(_goal("round trip p50 <= 2x webhook's p50", v, "not measured", "<= 2x",
                             None))
        to_relay, relay_web = turn_ratio(sbs, v, "relay"), turn_ratio(sbs, "relay", "webhook")
        if to_relay and relay_web:
            out.append(_goal(
                "(reference, not a goal) round trip p50 against the bare two-hop Flask relay",
                v, f"{to_relay[0]:.2f}x (turns {to_relay[1]:.2f}-{to_relay[2]:.2f}x)", "-",
                None, f"side by side; the relay alone is {relay_web[0]:.2f}x webhook's p50"))
        elif p50 and relay_p50 and web_p50:
            out.append(_goal(
                "(reference, not a goal) round trip p50 against the bare two-hop Flask relay",
                v, f"{p50 / relay_p50:.2f}x ({p50:.2f} vs {relay_p50:.2f} ms)", "-", None,
                f"the relay alone is {relay_p50 / web_p50:.2f}x webhook's p50"))
        out += sbs_only_lines(sbs, v)
        out.append(_goal("round trip p99 <= 10 ms", v, f"{p99:.2f} ms", "<= 10 ms", p99 <= 10))
        start = _get(row, "make_started_ms", "p50")
        out.append(_goal("trigger-to-make-started p50 <= 5 ms", v, f"{start:.2f} ms", "<= 5 ms",
                         start <= 5))
        out.append(_ratio_goal(">= 10x per-job speed of Docker SDK exec_run (p50 round trip)",
                               v, p50, sdk_p50, 10))
        tput = _get(row, "load", "distinct", "completed_per_s")
        acc = _get(row, "load", "distinct", "accepted_per_s")
        g = _ratio_goal(">= 8x throughput of Docker SDK exec_run (distinct jobs run to the end "
                        "per second)", v, tput, sdk_tput, 8, unit="jobs/s",
                        higher_is_better=True)
        if acc and sdk_tput:
            g["note"] = f"counting accepted (not yet run) jobs: {acc / sdk_tput:.1f}x"
        out.append(g)
        out.append(_ratio_goal(">= 50x per-job speed of docker run (p50 round trip)", v, p50,
                               run_p50, 50))
        for mode, target, text in (("identical", 1000, "identical (coalesced) triggers"),
                                   ("distinct", 500, "distinct jobs")):
            load = _get(row, "load", mode) or {}
            rate, errors = load.get("accepted_per_s"), load.get("errors")
            out.append(_goal(f">= {target:,}/s accepted {text} at zero errors", v,
                             f"{rate:.0f}/s, {errors} errors" if rate is not None else "-",
                             f">= {target:,}/s, 0 errors",
                             rate is not None and rate >= target and errors == 0))
            if mode == "identical" and rate and accept_ceiling:
                out.append(_goal(
                    "(reference, not a goal) identical triggers accepted against bare Flask "
                    "answering the same POST with 202 and nothing else", v,
                    f"{rate / accept_ceiling:.2f}x ({rate:.0f} vs {accept_ceiling:.0f}/s)", "-",
                    None, "the relay's front app, `/accept`: the ceiling of this stack"))
            busy = _get(row, "identical_while_building") or {}
            if mode == "identical" and busy.get("accepted_per_s"):
                out.append(_goal(
                    "(reference, not a goal) identical triggers accepted while a build runs "
                    "(all join one waiting job)", v,
                    f"{busy['accepted_per_s']:.0f}/s, {busy['errors']} errors, "
                    f"{busy['jobs_made']} job(s) made", "-", None))
        idle = _get(row, "memory", "idle") or {}
        for service, limit in (("controller", 45), ("worker", 40)):
            rss = _get(idle, f"{service} serving", "rss")
            out.append(_goal(f"idle RSS of the serving process <= {limit} MB ({service})", v,
                             f"{rss:.1f} MB" if rss else "not measured", f"<= {limit} MB",
                             rss <= limit if rss else None))
        pss = _get(row, "memory", "pss_per_service_idle") or {}
        for service in ("controller", "worker"):
            value = pss.get(service)
            out.append(_goal(f"PSS master+worker <= 60 MB ({service})", v,
                             f"{value:.1f} MB" if value else "not measured", "<= 60 MB",
                             value <= 60 if value else None))
    extra = results.get("mt_only", {})
    stream = extra.get("log_stream")
    if stream and "error" not in stream:
        size = f"{stream['bytes_expected'] / 1e6:.0f} MB log"
        short = stream["log_size"] - stream["bytes_received"]
        out.append(_goal(f">= 100 MB/s log streaming ({size})", "mt-host",
                         f"{stream['mb_per_s']:.0f} MB/s", ">= 100 MB/s",
                         stream["mb_per_s"] >= 100 and short <= 0,
                         f"the follow ended {short:,} bytes short of the stored log"
                         if short > 0 else ""))
        out.append(_goal(f"RSS growth <= 20 MB while streaming ({size})", "mt-host",
                         ", ".join(f"{k} +{v:.1f}" for k, v in stream["rss_growth"].items()
                                   if "serving" in k) + " MB",
                         "<= 20 MB", stream["max_rss_growth"] <= 20))
    hist = extra.get("history")
    if hist and "error" not in hist:
        n = f"{hist['filled']['jobs']:,}"
        for key, text in (("post_jobs_ms", "POST /jobs"), ("get_job_ms", "GET /jobs/<id>")):
            ratio = hist["ratio_filled_to_empty"][f"{key}_p50"]
            out.append(_goal(f"{text} with {n} jobs within 1.2x of an empty history (p50)",
                             "mt-host",
                             f"{ratio:.2f}x ({hist['filled'][key]['p50']:.2f} vs "
                             f"{hist['empty'][key]['p50']:.2f} ms)", "<= 1.2x", ratio <= 1.2))
    return out


# --- results.md -------------------------------------------------------------------------------
def _f(value, digits: int = 1) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.{digits}f}"


def _rows(results: dict) -> list[tuple[str, dict]]:
    rows = results.get("rows", {})
    return [(name, rows[name]) for name in ROW_ORDER if name in rows]


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in lines)]


def main_table(results: dict) -> list[str]:
    lines = []
    for name, row in _rows(results):
        if "error" in row:
            lines.append([name, f"failed: {row['error'][:80]}"] + [""] * 9)
            continue
        rt, st = row["roundtrip_ms"], row["make_started_ms"]
        d, i = row["load"]["distinct"], row["load"]["identical"]
        lines.append([
            f"{row['label']}", _f(rt.get("p50"), 2), _f(rt.get("p95"), 2), _f(rt.get("p99"), 2),
            f"{rt.get('n', 0):,}", _f(st.get("p50"), 2),
            _f(d["accepted_per_s"], 0), _f(d["completed_per_s"], 0), _f(i["accepted_per_s"], 0),
            f"{d['errors']}/{i['errors']}",
            _f(d["cpu"]["server_ms_per_job"], 2), _f(d["cpu"]["machine_ms_per_job"], 2)])
    return _table(["row", "round trip p50 ms", "p95 ms", "p99 ms", "n",
                   "trigger-to-make-started p50 ms", "distinct accepted/s",
                   "distinct completed/s", "identical accepted/s", "errors (distinct/identical)",
                   "server CPU ms/job", "machine CPU ms/job"], lines)


def memory_table(results: dict) -> list[str]:
    lines = []
    for _name, row in _rows(results):
        if "error" in row:
            continue
        mem = row["memory"]
        for proc, idle in mem["idle"].items():
            lines.append([row["label"], proc, _f(idle["rss"]), _f(_get(mem, "loaded_peak", proc,
                                                                         "rss_peak")),
                          _f(idle["pss"]), _f(_get(mem, "after_load", proc, "pss"))])
        for service, pss in mem.get("pss_per_service_idle", {}).items():
            if any(p.startswith(service + " master") for p in mem["idle"]):
                lines.append([row["label"], f"**{service} master+serving**", "", "", _f(pss), ""])
    return _table(["row", "process", "idle RSS MB", "peak RSS under load MB", "idle PSS MB",
                   "PSS after load MB"], lines)


def detail_table(results: dict) -> list[str]:
    lines = []
    for _name, row in _rows(results):
        if "error" in row:
            continue
        st = row["make_started_ms"]
        for mode in ("distinct", "identical"):
            load = row["load"][mode]
            extra = ""
            if "job_states" in load:
                extra = (f"{load['jobs_run']:,} jobs, all ended in "
                         f"{load['until_all_ended_s']:.1f} s")
            lines.append([row["label"], mode, load["tool"], f"{load['requests']:,}",
                          _f(load["latency_ms"].get("p50"), 2),
                          _f(load["latency_ms"].get("p99"), 2), _f(load["accepted_per_s"], 0),
                          _f(load["completed_per_s"], 1), str(load["errors"]),
                          _f(load["cpu"]["server_ms_per_job"], 2) + f" per {load['cpu']['per']}",
                          extra])
        lines.append([row["label"], "trigger-to-make-started", "sequential", f"{st.get('n', 0):,}",
                      _f(st.get("p50"), 2), _f(st.get("p99"), 2), "", "", str(st.get("errors")),
                      "", ""])
    return _table(["row", "phase", "client", "requests", "latency p50 ms", "p99 ms",
                   "accepted/s", "completed/s", "errors", "server CPU ms", "notes"], lines)


def cpu_parts_table(results: dict) -> list[str]:
    lines = []
    for _name, row in _rows(results):
        if "error" in row:
            continue
        cpu = row["load"]["distinct"]["cpu"]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in cpu["parts"].items())
        lines.append([row["label"], parts, _f(cpu["harness_children_ms_per_job"], 2),
                      _f(cpu["machine_ms_per_job"], 2)])
    return _table(["row", "server parts, ms CPU per distinct job", "harness's children ms/job",
                   "whole machine ms/job"], lines)


def side_by_side_section(results: dict) -> list[str]:
    """The round trips taken in turns (bench/side_by_side.py)."""
    sbs = results.get("side_by_side")
    if not sbs:
        return []
    head = ["", "## Round trips side by side", ""]
    if "error" in sbs:
        return [*head, f"Failed: {sbs['error']}"]
    lines = []
    for name, r in sbs["rows"].items():
        block = _get(results, "rows", name, "roundtrip_ms", "p50")
        web = turn_ratio(sbs, name, "webhook") if name != "webhook" else None
        lines.append([
            _get(results, "rows", name, "label",
                 default=SBS_ONLY.get(name, (name,))[0]), _f(r["p50_ms"], 2),
            _f(block, 2), f"{r['p50_ms'] / block:.2f}x" if r["p50_ms"] and block else "-",
            f"{web[0]:.2f}x ({web[1]:.2f}-{web[2]:.2f})" if web else "-",
            f"{r['n']:,}" + (" (time bound hit)" if r.get("stopped_by_time") else ""),
            str(sum(r["errors"].values())),
            ", ".join("-" if x is None else f"{x:.2f}" for x in r["turn_p50s_ms"])])
    return [*head,
            f"These rows up at once, {sbs['per_round']} sequential round trips of each in "
            f"turn, {sbs['rounds']} turns, the order rotated every turn and reversed in every "
            "other cycle of rotations. The round-trip goal's ratio is the median of the turns' "
            "ratios: a drift of the machine's speed over the minutes weighs on both rows of a "
            "turn alike, to first order. \"Against own block\": each row's p50 here over its "
            "p50 in its own block, which shows what running beside the others (and the "
            "drift) cost each row." + _sbs_quiet(sbs.get("quiet_before"))
            + "".join(f" Not in the turns: {SBS_ONLY.get(name, (name,))[0]}, which could not "
                      f"start ({why})." for name, why in sbs.get("skipped", {}).items()), "",
            *_table(["row", "p50 ms", "own block p50 ms", "against own block",
                     "against webhook, median of turns (lowest-highest)", "n", "errors",
                     "p50 of each turn, ms"], lines)]


def goals_table(results: dict) -> list[str]:
    mark = {True: "met", False: "**missed**", None: "not measured"}
    return _table(["goal", "row", "measured", "target", "met?"],
                  [[g["goal"] + (f"; {g['note']}" if g["note"] else ""), g["variant"],
                    g["measured"], g["target"],
                    mark[g["met"]] if g["target"] != "-" else "-"] for g in results["goals"]])


def breakdown_section(results: dict) -> list[str]:
    """Where a maketrigger round trip's time goes, from the `stamp` samples."""
    lines = []
    for _name, row in _rows(results):
        for part, ms in (row.get("breakdown_ms") or {}).items():
            lines.append([row["label"], part, _f(ms, 2)])
    if not lines:
        return []
    return ["", "### Where a maketrigger round trip goes (median of the make-started samples)",
            "", "From the client's clock, the job's `created_at`/`finished_at` (millisecond "
            "resolution) and the recipe's `date +%s%N`.", "",
            *_table(["row", "part", "p50 ms"], lines)]


def extra_section(results: dict) -> list[str]:
    out = breakdown_section(results)
    stream = _get(results, "mt_only", "log_stream")
    if stream:
        if "error" in stream:
            out += ["", f"Log streaming failed: {stream['error']}"]
        else:
            out += ["", "### Log streaming (mt-host)", "",
                    f"`big` printed {stream['bytes_expected'] / 1e6:.0f} MB; the client followed "
                    f"`GET /jobs/<id>/log?follow=1` and received {stream['bytes_received']:,} "
                    f"bytes in {stream['seconds']:.2f} s from the trigger: "
                    f"**{stream['mb_per_s']:.0f} MB/s**; job {stream['job_state']}, "
                    f"stored log {stream['log_size']:,} bytes, truncated: "
                    f"{stream['log_truncated']}. RSS growth (peak minus before, MB): "
                    + ", ".join(f"{k} {v:+.1f}" for k, v in stream["rss_growth"].items()) + "."]
            short = stream["log_size"] - stream["bytes_received"]
            if short > 0:
                out += ["", f"**The follow ended {short:,} bytes short of the stored log**: "
                        "the response closed before the log's end, though the job had ended "
                        "and stored all of it (a lost tail)."]
    hist = _get(results, "mt_only", "history")
    if hist:
        if "error" in hist:
            out += ["", f"History figures failed: {hist['error']}"]
        else:
            lines = []
            for key, text in (("post_jobs_ms", "POST /jobs"), ("get_job_ms", "GET /jobs/<id>"),
                              ("list_jobs_ms", "GET /jobs (first page)")):
                e, f = hist["empty"][key], hist["filled"][key]
                lines.append([text, _f(e["p50"], 2), _f(e["p95"], 2), _f(f["p50"], 2),
                              _f(f["p95"], 2), _f(hist["ratio_filled_to_empty"][f"{key}_p50"], 2)])
            out += ["", f"### History of {hist['filled']['jobs']:,} jobs (mt-host)", "",
                    *_table(["request", "empty p50 ms", "empty p95 ms", "filled p50 ms",
                             "filled p95 ms", "ratio p50"], lines), "",
                    f"Filled with executemany in one transaction in "
                    f"{hist['filled']['fill_s']:.1f} s (database {hist['filled']['db_mb']:.0f} "
                    f"MB); controller start: {hist['empty']['controller_start_s']:.2f} s empty, "
                    f"{hist['filled']['controller_start_s']:.2f} s filled."]
    return out


def _images_line(images: dict | None) -> str | None:
    if not images:
        return None
    built = "built by this run" if images.get("built_by_this_run") else "built before the run"
    return "- compose images (" + built + "): " + ", ".join(
        f"{v['tag']} {v['id'].removeprefix('sha256:')} of {v['created'][:19]}Z"
        for k, v in images.items() if isinstance(v, dict))


def _loads_line(results: dict) -> str:
    loads = [f"{name} {row['loadavg_before'][0]:.1f}" for name, row in _rows(results)
             if "loadavg_before" in row]
    line = "Load average (1 min) before each row: " + ", ".join(loads) + "."
    quiet = [f"{name} {_quiet(row['quiet_before'])}" for name, row in _rows(results)
             if "quiet_before" in row]
    if quiet:  # (runs before 2026-12-07 did not wait)
        line += (" Each row's measurement began once the CPUs had been 90% idle for a second "
                 "(after its servers were up and warm), or after 30 s without; waited: "
                 + ", ".join(quiet) + ".")
    return line


def _sbs_quiet(q: dict | None) -> str:
    if q is None:  # (runs before 2026-12-07 did not wait)
        return ""
    if q["quiet"]:
        return (f" The turns began {q['waited_s']:.0f} s after the servers were up and warm, "
                "once the CPUs had been 90% idle for a second.")
    return (f" The turns began after {q['waited_s']:.0f} s of waiting for the CPUs to be 90% "
            f"idle for a second, which they never were ({q['idle']:.1%} idle in the last "
            "second).")


def _quiet(q: dict) -> str:
    return (f"{q['waited_s']:.0f} s" if q["quiet"]
            else f"{q['waited_s']:.0f} s, never quiet ({q['idle']:.1%} idle in the last second)")


def markdown(results: dict) -> str:
    m, t, s = results["machine"], results["tools"], results["sizes"]
    product = results["product"]
    changed = product["uncommitted_product_files"]
    lines = [
        f"# maketrigger benchmark, {results['started_at']}"
        + (" (--quick: a smoke run, not a measurement)" if s["quick"] else ""), "",
        "One run on a shared, noisy machine: read the figures as this run's, not as constants. "
        "Every row ran in the same run, on the same trivial Makefile (bench/common.py).", "",
        f"- machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, kernel "
        f"{m['kernel']}, {m['os']}, Python {m['python']}"
        + (f" ({m['python_build']})" if m.get("python_build") else "") + "; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}",
        "- tools: " + ", ".join(f"{k} {v}" for k, v in t.items() if v),
        f"- maketrigger: {product['commit'][:12]} ({product['subject']})"
        + (f", with uncommitted changes in {', '.join(changed)}" if changed else ""),
        _images_line(results.get("images")),
        f"- sizes: {s['rt']:,} round trips ({s['docker_rt']:,} for docker exec, {s['run_rt']} "
        f"for docker run), {s['stamp']} make-started samples, bursts of {s['http_load']:,} HTTP "
        f"requests / {s['cmd_load']} commands / {s['run_load']} containers at concurrency "
        f"{s['concurrency']}, {s['big_bytes'] / 1e6:.0f} MB log, {s['history']:,} jobs of "
        f"history" + (f", side by side {s['turns']} turns of {s['per_turn']} round trips"
                      if "turns" in s else ""),
        f"- took {results['took_s'] / 60:.1f} min; chart: `{results['chart']}`", "",
        "MB = 10^6 bytes. Round trip: sequential, one keep-alive connection, trigger to "
        "make ended (maketrigger: `POST /jobs {\"target\": \"noop\", \"wait\": true}`). "
        "Trigger-to-make-started: the `stamp` target's `date +%s%N` minus the client's "
        "send time. Distinct bursts vary `N` (in WORKER_VARS); identical bursts coalesce in "
        "maketrigger only. Completed/s: jobs made by the burst that ran to their end, per "
        "second from the burst's start to the last one's end. Server CPU: the server processes "
        "(with the make they ran and waited for) or containers' cgroups; machine CPU: the "
        "whole machine, client included.", "",
        "## Goals", "", *goals_table(results), *side_by_side_section(results), "",
        "## All rows", "", *main_table(results), "", _loads_line(results), "",
        "## Bursts and make-started", "", *detail_table(results), "",
        "## CPU per distinct job", "", *cpu_parts_table(results), "",
        "## Memory", "", *memory_table(results),
        *extra_section(results), "",
    ]
    errors = {k: v["error"] for k, v in results.get("rows", {}).items() if "error" in v}
    if errors:
        lines += ["## Rows that failed", "", *(f"- {k}: {v}" for k, v in errors.items()), ""]
    return "\n".join(line for line in lines if line is not None) + "\n"


def main(argv: list[str]) -> None:
    path = Path(argv[1])
    results = json.loads(path.read_text())
    results["goals"] = goals(results)
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    (path.parent / "results.md").write_text(markdown(results))


if __name__ == "__main__":
    main(sys.argv)
