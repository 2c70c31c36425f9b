"""The end-to-end benchmark: `python -m bench.run [--quick] [--concurrency 1,50,500]`.

Starts the fake Kimi (TLS, an injected round trip per call, a fixed token rate) and the proxy
(reverse mode; a child process by default), then at each concurrency measures the limit (the
fake's completion stream called directly on an existing conversation), the proxy through the
openai SDK, and the proxy through a raw httpx client. Writes bench/results/latest.{json,md}.
Loopback only; bounded by --max-seconds; stops everything it started. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fixtures.fake_kimi import FakeKimi

from ._deletes import count_deletes
from ._phases import Env, delete_limit_conversations, run_phase
from ._proxy import ProxyHandle, start_proxy
from ._report import add_ratios, markdown, write_results
from ._saturation import run_saturation
from ._stats import raise_fd_limit

__all__ = ["BenchConfig", "default_completions", "main", "run_bench"]

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("limit", "sdk", "raw")

#: how the proxy process is run: its event loop ("default": uvloop when installed) and extra
#: mitmproxy options. "after" is the proxy as shipped; "before" is it as it was before the second
#: speed round (asyncio's loop, httpx/httpcore for the Kimi calls), for a same-run comparison.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "after": ("default", {}),
    "before": ("asyncio", {"kimi_http_client": "httpx"}),
    "asyncio": ("asyncio", {}),
    "uvloop": ("uvloop", {}),
    "httpx": ("default", {"kimi_http_client": "httpx"}),
    # the proxy of another checkout (--baseline-tree), e.g. the release the issue measured
    "baseline": ("baseline", {}),
    # as shipped, but every answer event written at once (stream_flush_ms=0)
    "unbatched": ("default", {"stream_flush_ms": 0}),
}


def default_completions(concurrency: int) -> int:
    """40 at c=1 (p99 is then the 40th value: read it as a max), 4 waves up to 500 in all."""
    return min(max(40, 4 * concurrency), max(concurrency, 500))


#: 80 characters of echo: about 32 answer events of 1..4 characters each
DEFAULT_PROMPT = "Measure the path, not the model: how long until the first token arrives?"


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchConfig:
    concurrency: tuple[int, ...] = (1, 50, 500)
    #: completions per level; None: default_completions(c)
    completions: int | None = None
    rtt: float = 0.040
    tls: bool = True
    token_rate: float = 200.0
    #: the fake writes each event in one piece (a server flushing per event), not 1..24 bytes
    chunk_size: tuple[int, int] = (4096, 4096)
    prompt: str = DEFAULT_PROMPT
    proxy_mode: str = "subprocess"
    #: the tokens are per worker (one account per open stream, like many users), so this only
    #: guards the rule; it is not what limits the benchmark
    max_account_concurrency: int = 5
    precreate_conversations: int = 1
    max_seconds: float = 240.0
    #: cProfile the proxy process (subprocess mode) into this file
    profile_proxy: Path | None = None
    kinds: tuple[str, ...] = KINDS
    #: one whole run (fresh proxy and store) per value: 600 is the proxy's default, 0 deletes
    #: each conversation as its reply ends
    conversation_ttls: tuple[int, ...] = (600,)
    #: one whole run per proxy variant (VARIANTS): an A/B in one run, e.g. ("before", "after")
    proxy_variants: tuple[str, ...] = ("after",)
    #: the checkout (with its own .venv) the "baseline" variant runs
    baseline_tree: Path | None = None
    #: after the runs: completions/s at saturation with `kimi-free-api run --workers N` per N
    saturation_workers: tuple[int, ...] = ()
    saturation_concurrency: int = 100
    saturation_completions: int = 600
    #: > 0: the variants' proxies run side by side (one per variant, all started before the
    #: first phase) and their phases alternate this many times per level, so a pair of phases
    #: lies seconds apart (docs/benchmarks.md, "Fourth round")
    rounds: int = 0


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import mitmproxy.version

    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "mitmproxy": mitmproxy.version.VERSION,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "network": "loopback, fake upstream + proxy + clients on one machine",
    }


async def run_bench(cfg: BenchConfig, *, workdir: Path | None = None) -> dict[str, Any]:
    """Run every level and client kind; returns the result dict (see docs/benchmarks.md)."""
    fd_limit = raise_fd_limit()
    started = time.monotonic()
    result: dict[str, Any] = {
        "config": {
            "concurrency": list(cfg.concurrency),
            "rtt_ms": cfg.rtt * 1000,
            "tls": cfg.tls,
            "token_rate": cfg.token_rate,
            "chunk_size": list(cfg.chunk_size),
            "prompt_chars": len(cfg.prompt),
            "proxy_mode": cfg.proxy_mode,
            "accounts": "one refresh token per worker (bench-0 ... bench-<c-1>; "
            "bench-run<R>-<i> in the R-th further run)",
            "max_account_concurrency": cfg.max_account_concurrency,
            "precreate_conversations": cfg.precreate_conversations,
            "fd_limit": fd_limit,
        },
        "machine": machine(),
        "levels": [],
        "notes": [],
    }
    result["config"]["conversation_ttls"] = list(cfg.conversation_ttls)
    result["config"]["proxy_variants"] = {v: VARIANTS[v] for v in cfg.proxy_variants}
    if cfg.baseline_tree is not None:
        result["config"]["baseline_tree"] = str(cfg.baseline_tree)
    with tempfile.TemporaryDirectory(prefix="kimi-bench-") as tmp:
        root = Path(tempfile.mkdtemp(dir=workdir)) if workdir else Path(tmp)
        result["config"]["workdir_fs"] = _filesystem(root)
        fake = FakeKimi(
            dialect_routes="legacy",
            rtt=cfg.rtt,
            tls=cfg.tls,
            token_rate=cfg.token_rate,
            chunk_size=cfg.chunk_size,
        )
        await fake.start()
        try:
            if cfg.rounds > 0:
                for index, ttl in enumerate(cfg.conversation_ttls):
                    base = root / f"rounds-{index}"
                    base.mkdir()
                    await _alternating_run(cfg, fake, base, (ttl, index), started, result)
            runs = [(v, ttl) for v in cfg.proxy_variants for ttl in cfg.conversation_ttls]
            for index, (variant, ttl) in enumerate(runs if cfg.rounds <= 0 else []):
                base = root / f"run-{index}"
                base.mkdir()
                prefix = "bench" if index == 0 else f"bench-run{index}"
                await _one_run(cfg, fake, base, (variant, ttl, prefix), started, result)
            result["saturation"] = []
            for workers in cfg.saturation_workers:
                if time.monotonic() > started + cfg.max_seconds:
                    result["notes"].append(f"--workers {workers} skipped: --max-seconds used up")
                    continue
                _set_rtt(fake, cfg.rtt)
                row = await run_saturation(
                    fake,
                    workers=workers,
                    concurrency=cfg.saturation_concurrency,
                    completions=cfg.saturation_completions,
                    workdir=root,
                    prompt=cfg.prompt,
                    token_prefix=f"bench-w{workers}",
                )
                result["saturation"].append(row)
                sys.stderr.write(
                    f"workers={workers} c={row['concurrency']} {row['completions_per_s']}/s "
                    f"proxy CPU {row['proxy_cpu_s_per_1k']} s/1k\n"
                )
            # every run deletes what it created (the proxies at shutdown, the limit's by us)
            result["conversations_left_behind"] = len(fake.record.live_conversations())
        finally:
            await fake.stop()
    result["duration_s"] = round(time.monotonic() - started, 1)
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def _start(
    cfg: BenchConfig,
    fake: FakeKimi,
    workdir: Path,
    run: tuple[str, int],
    profile: Path | None = None,
) -> contextlib.AbstractAsyncContextManager[ProxyHandle]:
    """A proxy under test: `run` is its variant and conversation TTL."""
    variant, ttl = run
    loop, extra = VARIANTS[variant]
    return start_proxy(
        mode=cfg.proxy_mode,
        kimi_base_url=fake.base_url,
        ca_cert=fake.ca_cert_path,
        workdir=workdir,
        options={
            "kimi_dialect": "legacy",
            "max_account_concurrency": cfg.max_account_concurrency,
            "precreate_conversations": cfg.precreate_conversations,
            "conversation_ttl": ttl,
            **extra,
        },
        profile=profile,
        loop=loop,
        tree=cfg.baseline_tree if variant == "baseline" else None,
    )


def _env(
    cfg: BenchConfig, fake: FakeKimi, proxy: ProxyHandle, started: float, prefix: str
) -> Env:
    client_tls = ssl.create_default_context(cafile=fake.ca_cert_path) if fake.ca_cert_path else None
    return Env(
        fake=fake,
        proxy=proxy,
        client_tls=client_tls,
        prompt=cfg.prompt,
        rtt=cfg.rtt,
        deadline=started + cfg.max_seconds,
        token_prefix=prefix,
    )


def _count_cleanup(fake: FakeKimi, envs: list[Env]) -> set[str]:
    """With the proxies stopped: each phase's deletions. Returns the live conversations."""
    requests = fake.record.requests
    live = {c.id for c in fake.record.live_conversations()}
    for env in envs:
        for phase, used in env.used:
            phase["cleanup"] = count_deletes(requests, used, phase["completions"], live)
    return live


async def _one_run(
    cfg: BenchConfig,
    fake: FakeKimi,
    base: Path,
    run: tuple[str, int, str],
    started: float,
    result: dict[str, Any],
) -> int:
    """Every level with a fresh proxy (and store) of one variant at one conversation TTL, with
    its own refresh tokens (`run`: variant, TTL, token prefix); then, with the proxy stopped,
    each phase's deletions. Returns the conversations left behind on the fake."""
    variant, ttl, prefix = run
    _set_rtt(fake, cfg.rtt)
    profile = cfg.profile_proxy
    if profile is not None and len(cfg.conversation_ttls) * len(cfg.proxy_variants) > 1:
        profile = profile.with_name(f"{profile.stem}-{variant}-ttl{ttl}{profile.suffix}")
    before = {c.id for c in fake.record.live_conversations()}
    async with _start(cfg, fake, base, (variant, ttl), profile) as proxy:
        env = _env(cfg, fake, proxy, started, prefix)
        try:
            await _levels(cfg, env, result, ttl)
            for level in result["levels"]:
                level.setdefault("variant", variant)
                level.setdefault("proxy_loop", proxy.loop)
        finally:
            _set_rtt(fake, 0.0)
            await delete_limit_conversations(env)
    return len(_count_cleanup(fake, [env]) - before)


async def _alternating_run(
    cfg: BenchConfig,
    fake: FakeKimi,
    base: Path,
    run: tuple[int, int],
    started: float,
    result: dict[str, Any],
) -> None:
    """`--rounds K`: one proxy per variant, all running at once, and at each level K rounds of
    one phase per variant in turn. Each phase is a level of its own (variant, round), so the
    report pairs the n-th phase of a variant with the n-th of the baseline, seconds apart."""
    ttl, run_index = run
    _set_rtt(fake, cfg.rtt)
    async with contextlib.AsyncExitStack() as stack:
        sides: list[tuple[str, str, Env]] = []
        for side, variant in enumerate(cfg.proxy_variants):
            workdir = base / f"{side}-{variant}"
            workdir.mkdir()
            proxy = await stack.enter_async_context(_start(cfg, fake, workdir, (variant, ttl)))
            env = _env(cfg, fake, proxy, started, f"bench-rounds{run_index}-{side}")
            sides.append((variant, proxy.loop, env))
        try:
            for concurrency in cfg.concurrency:
                n = cfg.completions or default_completions(concurrency)
                for _ in range(cfg.rounds):
                    for variant, loop_name, env in sides:
                        level: dict[str, Any] = {
                            "concurrency": concurrency,
                            "conversation_ttl": ttl,
                            "variant": variant,
                            "proxy_loop": loop_name,
                            "results": {},
                        }
                        result["levels"].append(level)
                        for kind in cfg.kinds:
                            level["results"][kind] = await run_phase(env, kind, concurrency, n)
                            _progress(level["results"][kind])
                        add_ratios(level["results"])
        except TimeoutError:
            result["notes"].append(f"--rounds stopped: --max-seconds ({cfg.max_seconds:.0f} s)")
        finally:
            _set_rtt(fake, 0.0)
            for _, _, env in sides:
                await delete_limit_conversations(env)
    _count_cleanup(fake, [env for _, _, env in sides])


async def _levels(cfg: BenchConfig, env: Env, result: dict[str, Any], ttl: int) -> None:
    for concurrency in cfg.concurrency:
        n = cfg.completions or default_completions(concurrency)
        level: dict[str, Any] = {
            "concurrency": concurrency,
            "conversation_ttl": ttl,
            "results": {},
        }
        result["levels"].append(level)
        for kind in cfg.kinds:
            try:
                level["results"][kind] = await run_phase(env, kind, concurrency, n)
            except TimeoutError:
                result["notes"].append(
                    f"stopped at c={concurrency} ({kind}): --max-seconds "
                    f"({cfg.max_seconds:.0f} s) used up"
                )
                add_ratios(level["results"])
                return
            _progress(level["results"][kind])
        add_ratios(level["results"])


def _filesystem(path: Path) -> str:
    """The mount (and type) the proxy's SQLite store lives on: its fsyncs cost differ a lot."""
    best = ("/", "?")
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                parts = line.split()
                if str(path).startswith(parts[1]) and len(parts[1]) >= len(best[0]):
                    best = (parts[1], parts[2])
    except OSError:
        return "unknown"
    return f"{best[0]} ({best[1]})"


def _set_rtt(fake: FakeKimi, rtt: float) -> None:
    # The proxy deletes every conversation it holds when it stops, 16 at a time; with the
    # injected RTT that is ~40 ms each. Once the measurement is over the RTT is dropped so
    # cleanup takes seconds, and set again for the next run. (FakeKimi has no public setter
    # for this; its config is a frozen value.)
    core = fake._core
    core.config = dataclasses.replace(core.config, rtt=rtt)


def _progress(res: dict[str, Any]) -> None:
    sys.stderr.write(
        f"c={res['concurrency']:<4} {res['client']:<6} n={res['completions']:<4} "
        f"ttft p50={res['ttft_ms']['p50']:.1f}ms p95={res['ttft_ms']['p95']:.1f}ms "
        f"wall={res['wall_s']:.1f}s errors={sum(res['errors'].values())}\n"
    )
    sys.stderr.flush()


def _parse_levels(text: str) -> tuple[int, ...]:
    levels = tuple(int(part) for part in text.split(",") if part.strip())
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return levels


def _parse_ttls(text: str) -> tuple[int, ...]:
    try:
        ttls = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        ttls = ()
    if not ttls or min(ttls) < 0:
        raise argparse.ArgumentTypeError("a comma-separated list of whole seconds >= 0, e.g. 600,0")
    return ttls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="concurrency 1,10; 10 completions")
    parser.add_argument("--concurrency", type=_parse_levels, help="e.g. 1,50,500 (the default)")
    parser.add_argument("--completions", type=int, help="completions per level")
    parser.add_argument("--rtt-ms", type=float, default=40.0, help="injected RTT per call")
    parser.add_argument("--token-rate", type=float, default=200.0, help="tokens/s per stream")
    parser.add_argument("--no-tls", action="store_true", help="plain HTTP to the fake Kimi")
    parser.add_argument(
        "--proxy", choices=("subprocess", "inprocess"), default="subprocess", help="where it runs"
    )
    parser.add_argument("--max-seconds", type=float, default=240.0, help="time budget")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument(
        "--workdir", type=Path, help="folder for the proxy's store and CA (default: a temp dir)"
    )
    parser.add_argument("--profile-proxy", type=Path, help="cProfile the proxy process to FILE")
    parser.add_argument(
        "--clients",
        default=",".join(KINDS),
        help="which of limit,sdk,raw,relay to run (default limit,sdk,raw; relay: straight to the "
        "relay, without the pass through mitmproxy)",
    )
    parser.add_argument(
        "--conversation-ttl",
        type=_parse_ttls,
        default=(600,),
        help="the proxy's conversation_ttl; a comma-separated list runs everything once per "
        "value, e.g. 600,0 (default 600)",
    )
    parser.add_argument(
        "--variants",
        default="after",
        help="how the proxy runs: after (as shipped), before (asyncio loop + httpx for Kimi: "
        "as before the second speed round), asyncio, uvloop, httpx; a comma-separated list runs "
        "everything once per variant, e.g. before,after (default after)",
    )
    parser.add_argument(
        "--workers",
        default="",
        help="after the runs, completions/s at saturation of `kimi-free-api run --workers N` "
        "for each N of this comma-separated list, e.g. 1,2 (default: not measured)",
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="a checkout of this project with its own .venv whose proxy the 'baseline' variant "
        "runs (e.g. `git worktree add ../baseline <commit>`)",
    )
    parser.add_argument(
        "--prompt",
        default=DEFAULT_PROMPT,
        help="the user message; the fake echoes its last 200 characters in 1..4-character "
        "events, so its length sets the events per answer",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="run the --variants' proxies side by side and alternate their phases this many "
        "times per level (pairs seconds apart; the report gives each pair's ratio to the "
        "baseline and their median), e.g. --variants baseline,after --rounds 10",
    )
    parser.add_argument(
        "--saturation-concurrency", type=int, default=100, help="open streams for --workers"
    )
    parser.add_argument(
        "--saturation-completions", type=int, default=600, help="timed completions for --workers"
    )
    args = parser.parse_args(argv)
    if "baseline" in args.variants.split(",") and args.baseline_tree is None:
        parser.error("the baseline variant needs --baseline-tree")
    unknown = [v for v in args.variants.split(",") if v and v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    cfg = BenchConfig(
        concurrency=args.concurrency or ((1, 10) if args.quick else (1, 50, 500)),
        completions=args.completions or (10 if args.quick else None),
        rtt=args.rtt_ms / 1000,
        tls=not args.no_tls,
        token_rate=args.token_rate,
        prompt=args.prompt,
        proxy_mode=args.proxy,
        max_seconds=args.max_seconds,
        profile_proxy=args.profile_proxy.resolve() if args.profile_proxy else None,
        kinds=tuple(k for k in args.clients.split(",") if k),
        conversation_ttls=args.conversation_ttl,
        proxy_variants=tuple(x for x in args.variants.split(",") if x),
        baseline_tree=args.baseline_tree.resolve() if args.baseline_tree else None,
        saturation_workers=tuple(int(x) for x in args.workers.split(",") if x.strip()),
        saturation_concurrency=args.saturation_concurrency,
        saturation_completions=args.saturation_completions,
        rounds=args.rounds,
    )
    result = asyncio.run(run_bench(cfg, workdir=args.workdir))
    paths = write_results(result, args.out)
    sys.stdout.write(markdown(result))
    sys.stdout.write("written: " + ", ".join(str(p) for p in paths) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
