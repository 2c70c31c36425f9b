"""Ratios to the limit, the JSON and markdown results, and the optional TTFT plot."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

__all__ = ["add_ratios", "markdown", "paired_ratios", "plot", "write_results"]


def _ratio(value: float, limit: float) -> float | None:
    return round(value / limit, 3) if limit else None


def add_ratios(level: dict[str, Any]) -> None:
    """Each proxy figure as a ratio to the limit measured at the same concurrency. CPU and RSS
    compare the whole setup (bench process + proxy process) with the setup without the proxy."""
    limit = level.get("limit")
    if limit is None:
        return
    for kind, res in level.items():
        if kind == "limit":
            continue
        ratios: dict[str, float | None] = {}
        for q in ("p50", "p95", "p99"):
            ratios[f"ttft_{q}"] = _ratio(res["ttft_ms"][q], limit["ttft_ms"][q])
        ratios["total_p50"] = _ratio(res["total_ms"]["p50"], limit["total_ms"]["p50"])
        ratios["chunks_per_s"] = _ratio(res["chunks_per_s"], limit["chunks_per_s"])
        ratios["upstream_calls_per_completion"] = _ratio(
            res["upstream_calls_per_completion"], limit["upstream_calls_per_completion"]
        )
        ratios["cpu_s_per_1k"] = _ratio(
            res["cpu_s_per_1k"]["total"], limit["cpu_s_per_1k"]["total"]
        )
        ratios["peak_rss_mb"] = _ratio(res["peak_rss_mb"]["total"], limit["peak_rss_mb"]["total"])
        res["ratio_to_limit"] = ratios
        res["ttft_p50_over_limit_ms"] = round(res["ttft_ms"]["p50"] - limit["ttft_ms"]["p50"], 3)


def paired_ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Proxy CPU per completion of each variant over the `baseline` variant's, pair by pair.

    `--variants baseline,after,baseline,after,...` runs the phases interleaved in that order,
    so the n-th `after` phase is compared with the n-th `baseline` phase of the same
    concurrency, TTL and client: a drift of the machine's speed during the run (other tenants,
    clock) then moves both sides of a pair alike. The median of the pairs is the figure.
    """
    phases: dict[tuple[Any, ...], dict[str, list[float]]] = {}
    for level in result["levels"]:
        for kind, res in level["results"].items():
            cpu = res.get("cpu_s_per_1k", {}).get("proxy_process")
            if kind == "limit" or cpu is None:
                continue
            key = (level["concurrency"], level.get("conversation_ttl"), kind)
            phases.setdefault(key, {}).setdefault(level.get("variant", "after"), []).append(cpu)
    rows = []
    for (concurrency, ttl, kind), by_variant in phases.items():
        baseline = by_variant.get("baseline", [])
        for variant, values in by_variant.items():
            pairs = list(zip(values, baseline, strict=False))
            if variant == "baseline" or not pairs:
                continue
            ratios = [round(value / base, 3) for value, base in pairs if base]
            if not ratios:
                continue
            rows.append(
                {
                    "concurrency": concurrency,
                    "conversation_ttl": ttl,
                    "client": kind,
                    "variant": variant,
                    "proxy_cpu_s_per_1k": [round(v, 3) for v, _ in pairs],
                    "baseline_proxy_cpu_s_per_1k": [round(b, 3) for _, b in pairs],
                    "ratios": ratios,
                    "median_ratio": round(statistics.median(ratios), 3),
                }
            )
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _ttl(ttl: float | None) -> str:
    return "–" if ttl is None else f"{ttl:g}"


def _cleanup_cell(cleanup: dict[str, Any] | None) -> str:
    if not cleanup or cleanup["deletes_per_conversation"] is None:
        return "–"
    return (
        f"{cleanup['deletes_per_conversation']:.2f} "
        f"({cleanup['deletes_not_2xx']}, {cleanup['left_behind']})"
    )


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"Fake Kimi: RTT {cfg['rtt_ms']:.0f} ms per call, TLS {'on' if cfg['tls'] else 'off'}, "
        f"{cfg['token_rate']:.0f} tokens/s; proxy {cfg['proxy_mode']}; "
        f"{result['machine']['cpus']} CPUs, {result['machine']['cpu_model']}.",
        "",
        "| c | TTL s | variant (loop) | client | n (ok) | TTFT p50 / p95 / p99 ms "
        "| TTFT p50 ×limit (+ms) | total p50 ms (×) | chunks/s (×) "
        "| upstream calls/compl. critical / all "
        "| CPU s/1k (×) | proxy CPU s/1k | peak RSS MB (×) | DELETEs/conv. (not 2xx, left) |",
        "|---:|---:|---|---|---:|---|---|---|---|---|---|---|---|---|",
    ]
    for level in result["levels"]:
        for kind in ("limit", "sdk", "raw", "relay"):
            res = level["results"].get(kind)
            if res is None:
                continue
            r = res.get("ratio_to_limit", {})
            t = res["ttft_ms"]
            over = res.get("ttft_p50_over_limit_ms")
            ttft_ratio = (
                "1"
                if kind == "limit"
                else "–"
                if over is None
                else f"{_cell(r.get('ttft_p50'))} (+{over:.1f})"
            )

            def x(key: str, r: dict[str, Any] = r) -> str:
                return f" ({_cell(r.get(key))}×)" if key in r else ""

            lines.append(
                f"| {level['concurrency']} | {_ttl(level.get('conversation_ttl'))} "
                f"| {level.get('variant', '–')} ({level.get('proxy_loop', '–')}) | {kind} "
                f"| {res['completions']} ({res['ok']}) "
                f"| {t['p50']:.1f} / {t['p95']:.1f} / {t['p99']:.1f} | {ttft_ratio} "
                f"| {res['total_ms']['p50']:.0f}{x('total_p50')} "
                f"| {res['chunks_per_s']:.0f}{x('chunks_per_s')} "
                f"| {_cell(res['critical_path_calls_per_completion'])} / "
                f"{_cell(res['upstream_calls_per_completion'])} "
                f"| {_cell(res['cpu_s_per_1k']['total'])}{x('cpu_s_per_1k')} "
                f"| {_cell(res['cpu_s_per_1k'].get('proxy_process'))} "
                f"| {_cell(res['peak_rss_mb']['total'])}{x('peak_rss_mb')} "
                f"| {_cleanup_cell(res.get('cleanup'))} |"
            )
    paired = result.get("paired") or []
    if paired:
        lines += [
            "",
            "Proxy CPU against the baseline, pair by pair (the n-th phase of a variant against "
            "the n-th baseline phase; phases run in the order of `--variants`):",
            "",
            "| c | TTL s | client | variant | proxy CPU s/1k | baseline | ratios | median |",
            "|---:|---:|---|---|---|---|---|---:|",
        ]
        for row in paired:
            lines.append(
                f"| {row['concurrency']} | {_ttl(row['conversation_ttl'])} | {row['client']} "
                f"| {row['variant']} | {', '.join(map(_cell, row['proxy_cpu_s_per_1k']))} "
                f"| {', '.join(map(_cell, row['baseline_proxy_cpu_s_per_1k']))} "
                f"| {', '.join(map(_cell, row['ratios']))} | **{_cell(row['median_ratio'])}** |"
            )
    if result.get("saturation"):
        lines += [
            "",
            "Saturation, `kimi-free-api run --workers N` (raw clients, one account each):",
            "",
            "| workers | processes | c | n (ok) | completions/s | TTFT p50 / p95 ms "
            "| total p50 ms | proxy CPU s/1k |",
            "|---:|---:|---:|---:|---:|---|---:|---:|",
        ]
        for row in result["saturation"]:
            t = row["ttft_ms"]
            lines.append(
                f"| {row['workers']} | {row['processes']} | {row['concurrency']} "
                f"| {row['completions']} ({row['ok']}) | {row['completions_per_s']:.1f} "
                f"| {t['p50']:.0f} / {t['p95']:.0f} | {row['total_ms']['p50']:.0f} "
                f"| {_cell(row['proxy_cpu_s_per_1k'])} |"
            )
    if result.get("notes"):
        lines += ["", *(f"- {note}" for note in result["notes"])]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> str:
    """TTFT p50/p95 against concurrency per client; returns a note on what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot written"
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in ("limit", "sdk", "raw", "relay"):
        xs, p50, p95 = [], [], []
        for level in result["levels"]:
            res = level["results"].get(kind)
            if res is not None:
                xs.append(level["concurrency"])
                p50.append(res["ttft_ms"]["p50"])
                p95.append(res["ttft_ms"]["p95"])
        if xs:
            (line,) = ax.plot(xs, p50, marker="o", label=f"{kind} p50")
            ax.plot(xs, p95, linestyle="--", color=line.get_color(), label=f"{kind} p95")
    ax.set_xscale("log")
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("time to first token (ms)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return f"plot written to {path.name}"


def write_results(result: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "latest.json"
    md_path = out_dir / "latest.md"
    result["paired"] = paired_ratios(result)
    note = plot(result, out_dir / "ttft_vs_concurrency.png")
    result.setdefault("notes", []).append(note)
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown(result), encoding="utf-8")
    return [json_path, md_path]
