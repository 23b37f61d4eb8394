"""The PNG chart: latency distributions of every row on a log axis (round trip and
trigger-to-make-started) and throughput bars (matplotlib, a bench-only dependency)."""

from __future__ import annotations

from pathlib import Path

from bench.report import ROW_ORDER

COLOURS = {"floor": "#555555", "webhook": "#1f77b4", "relay": "#8c564b", "mt-host": "#d62728",
           "mt-compose": "#ff7f0e", "docker-exec-cli": "#2ca02c", "docker-exec-sdk": "#17becf",
           "docker-run": "#9467bd"}


def draw(results: dict, samples: dict[str, dict], path: Path) -> None:
    """`samples`: row name -> {"roundtrip_s": [...], "make_started_s": [...]}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [n for n in ROW_ORDER if n in samples and "error" not in results["rows"][n]]
    if not rows:
        raise ValueError("no row was measured: nothing to draw")
    labels = [results["rows"][n]["label"] for n in rows]
    fig, axes = plt.subplots(1, 3, figsize=(18, 6.5), gridspec_kw={"width_ratios": [5, 5, 6]})

    for ax, key, title in ((axes[0], "roundtrip_s", "Round trip, trigger to make ended"),
                           (axes[1], "make_started_s", "Trigger to make started")):
        data = [[max(v * 1000, 1e-3) for v in samples[n][key]] or [float("nan")] for n in rows]
        parts = ax.boxplot(data, vert=False, whis=(1, 99), showfliers=True, patch_artist=True,
                           flierprops={"markersize": 2, "alpha": 0.3})
        for patch, name in zip(parts["boxes"], rows, strict=True):
            patch.set_facecolor(COLOURS.get(name, "#999999"))
            patch.set_alpha(0.6)
        ax.set_yticks(range(1, len(rows) + 1), [f"{lb}\n(n={len(samples[n][key])})"
                                                 for lb, n in zip(labels, rows, strict=True)])
        ax.set_xscale("log")
        ax.set_xlabel("milliseconds (log; box: p25-p75, whiskers p1-p99)")
        ax.set_title(title)
        ax.invert_yaxis()
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[1].set_yticklabels([])

    ax = axes[2]
    series = (("distinct", "accepted_per_s", "distinct, accepted/s"),
              ("distinct", "completed_per_s", "distinct, run to the end/s"),
              ("identical", "accepted_per_s", "identical (coalesced), accepted/s"))
    width = 0.27
    for k, (mode, key, text) in enumerate(series):
        values = [results["rows"][n]["load"][mode][key] for n in rows]
        bars = ax.barh([i + (k - 1) * width for i in range(len(rows))], values, width,
                       label=text, color=("#4c72b0", "#55a868", "#c44e52")[k])
        ax.bar_label(bars, [f"{v:,.0f}" for v in values], fontsize=7, padding=2)
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xscale("log")
    ax.set_xlabel("requests or jobs per second (log), concurrency "
                  f"{results['sizes']['concurrency']}")
    ax.set_title("Throughput under a bounded burst")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)

    quick = " (--quick smoke run)" if results["sizes"]["quick"] else ""
    m = results["machine"]
    fig.suptitle(f"maketrigger vs. the alternatives, one run {results['started_at']}{quick}: "
                 f"{m['nproc']} CPUs, {m['cpu_model']}, kernel {m['kernel']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
