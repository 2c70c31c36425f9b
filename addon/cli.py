"""The `kimi-free-api` command: run the proxy, run it against the built-in fake Kimi, replay.

    kimi-free-api [run] [--host H] [--port P] [--kimi-base-url URL] [--config FILE] ...
    kimi-free-api demo  [same flags]         # no account needed: a fake Kimi on loopback
    kimi-free-api replay FILE_OR_FOLDER ...  # check captured Kimi streams against the translator

Every flag can also come from the environment variable named in its help (flags win).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "listen_modes", "main"]

LOG_LEVELS = ("debug", "info", "warn", "error")


def _env(name: str, default: Any) -> Any:
    return os.environ.get(name, default)


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _add_serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default=_env("HOST", "0.0.0.0"),
        help="address to listen on (HOST; default 0.0.0.0)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=_env("PORT", "8000"),
        help="port to listen on (PORT; default 8000)",
    )
    p.add_argument(
        "--kimi-base-url",
        default=_env("KIMI_BASE_URL", "https://kimi.moonshot.cn"),
        help="Kimi web base URL (KIMI_BASE_URL; default https://kimi.moonshot.cn; "
        "https://www.kimi.com for the current Connect protocol)",
    )
    p.add_argument(
        "--kimi-ca-file",
        default=_env("KIMI_CA_FILE", ""),
        help="CA bundle to trust for Kimi's certificate (KIMI_CA_FILE; default: the system store)",
    )
    p.add_argument(
        "--dialect",
        choices=("auto", "legacy", "connect"),
        default=_env("DIALECT", "auto"),
        help="upstream protocol (DIALECT; default auto: by the base URL)",
    )
    p.add_argument(
        "--config",
        default=_env("CONFIG", ""),
        help="YAML file with accounts, gateway keys and options (CONFIG)",
    )
    p.add_argument(
        "--store",
        default=_env("STORE", "~/.kimi-free-api/accounts.sqlite3"),
        help="SQLite file for accounts and rotated tokens, or a postgresql://user:pass@host/db "
        "URL to share them between hosts (STORE)",
    )
    p.add_argument(
        "--conversation-ttl",
        type=int,
        default=_env("CONVERSATION_TTL", "600"),
        help="seconds a conversation the proxy created is kept after its last reply; "
        "0 = delete when the reply ends (CONVERSATION_TTL; default 600)",
    )
    p.add_argument(
        "--allow-private-urls",
        action="store_true",
        default=_env_bool("ALLOW_PRIVATE_URLS"),
        help="let clients name files on loopback/private addresses (ALLOW_PRIVATE_URLS)",
    )
    p.add_argument(
        "--intercept-port",
        type=int,
        default=_env("INTERCEPT_PORT", "0"),
        help="also listen as a regular HTTP proxy on this port and answer "
        "api.openai.com through Kimi (INTERCEPT_PORT; default off)",
    )
    p.add_argument(
        "--intercept-host",
        default=_env("INTERCEPT_HOST", "127.0.0.1"),
        help="address the interception proxy listens on (INTERCEPT_HOST; default 127.0.0.1: "
        "a regular proxy forwards to any public host, so it is not opened to the network "
        "unless you say so)",
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=_env("MAX_REQUEST_BYTES", str(64 * 1024 * 1024)),
        help="largest request body, before and after gzip/deflate decoding "
        "(MAX_REQUEST_BYTES; default 67108864 = 64 MiB)",
    )
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=_env("LOG_LEVEL", "info"),
        help="log verbosity (LOG_LEVEL; default info)",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=_env("LOG_FORMAT", "text"),
        help="text lines, or one JSON object per line (LOG_FORMAT; default text)",
    )
    p.add_argument(
        "--record-upstream",
        default=_env("RECORD_UPSTREAM", ""),
        metavar="FILE",
        help="append the proxy's own Kimi calls, tokens redacted, to this mitmproxy flow file "
        "for `kimi-free-api replay` (RECORD_UPSTREAM; default off)",
    )
    p.add_argument(
        "--workers",
        default=_env("WORKERS", "1"),
        help="proxy processes serving the port (SO_REUSEPORT; they share the store): a number, "
        "or auto = one per core (WORKERS; default 1)",
    )
    p.add_argument(
        "--confdir",
        default=_env("MITMPROXY_CONFDIR", "~/.mitmproxy"),
        help="mitmproxy's directory for its CA (MITMPROXY_CONFDIR)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kimi-free-api",
        description="An OpenAI-compatible API in front of Kimi's web chat (personal use).",
    )
    sub = parser.add_subparsers(dest="command")
    _add_serve_flags(sub.add_parser("run", help="run the proxy (the default)"))
    demo = sub.add_parser("demo", help="run the proxy against a built-in fake Kimi")
    _add_serve_flags(demo)
    replay = sub.add_parser("replay", help="run captured Kimi streams through the translator")
    replay.add_argument("paths", nargs="+", help="mitmproxy flow files (-w) or fixture folders")
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    replay.add_argument(
        "--save-fixture",
        metavar="FOLDER",
        help="instead of a report, write each Kimi answer as a golden fixture folder "
        "(FOLDER, or FOLDER-1, FOLDER-2, ...; expected.json is a draft to correct)",
    )
    return parser


def listen_modes(args: argparse.Namespace, base_url: str) -> list[str]:
    """mitmproxy's modes: the reverse proxy on --host/--port, and the interception proxy on
    --intercept-host (loopback unless told otherwise) / --intercept-port."""
    modes = [f"reverse:{base_url}@{args.port}"]
    if args.intercept_port:
        host = args.intercept_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address, bracketed before the port
        modes.append(f"regular@{host}:{args.intercept_port}")
    return modes


async def serve(args: argparse.Namespace, *, demo: bool = False) -> None:
    from mitmproxy import options

    from .kimi_proxy import KimiProxy
    from .process._master import proxy_master

    fake = None
    base_url = args.kimi_base_url
    dialect = args.dialect
    store = args.store
    verify: bool | str = True
    if demo:
        from fixtures.fake_kimi import FakeKimi

        fake = FakeKimi(rtt=0.0, token_rate=40.0)
        base_url = await fake.start()
        dialect = "legacy" if dialect == "auto" else dialect
        store = str(Path(tempfile.mkdtemp(prefix="kimi-free-api-demo-")) / "accounts.sqlite3")
    modes = listen_modes(args, base_url)
    opts = options.Options(listen_host=args.host, mode=modes)
    master = proxy_master(opts)
    if args.log_format == "json":
        from .process._logging import use_json_logs

        use_json_logs()
    addon = KimiProxy(verify=verify)
    master.addons.add(addon)
    master.options.update(
        confdir=os.path.expanduser(args.confdir),
        termlog_verbosity=args.log_level,
        kimi_base_url=base_url,
        kimi_dialect=dialect,
        kimi_store=store,
        conversation_ttl=args.conversation_ttl,
        allow_private_urls=args.allow_private_urls,
        kimi_ca_file=args.kimi_ca_file,
        max_request_bytes=args.max_request_bytes,
        connection_strategy="lazy",
    )
    if args.config:
        master.options.update(kimi_config=args.config)
    if args.record_upstream:
        master.options.update(record_upstream=args.record_upstream)
    logging.getLogger("kimi_free_api").setLevel(args.log_level.upper().replace("WARN", "WARNING"))
    if demo:
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        sys.stdout.write(
            f"kimi-free-api demo: a fake Kimi runs at {base_url}; no account is needed.\n"
            f"  curl http://{host}:{args.port}/v1/chat/completions "
            "-H 'Authorization: Bearer demo-token' -H 'Content-Type: application/json' "
            '-d \'{"model":"kimi","stream":true,"messages":'
            '[{"role":"user","content":"Hello"}]}\'\n'
        )
        sys.stdout.flush()
    _stop_on_signals(master)
    try:
        await master.run()
    finally:
        # Client connections still open at exit are cancelled by asyncio.run; Python 3.12.1's
        # stream callback reports each one as an error with a traceback. They are not errors.
        asyncio.get_running_loop().set_exception_handler(_quiet_cancellations)
        if fake is not None:
            await fake.stop()


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


def _stop_on_signals(master: Any) -> None:
    """SIGTERM (systemd, container runtimes) and SIGINT (Ctrl-C) both stop mitmproxy the orderly
    way: the addon's `done` deletes the conversations this process holds, within its bound, and
    the command exits 0. A second signal while that runs stops at once."""
    loop = asyncio.get_running_loop()

    def stop(sig: signal.Signals) -> None:
        for each in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(each)  # the next one gets the default: quit now
        logging.getLogger("kimi_free_api").info(
            "%s: deleting held conversations, then exiting", sig.name
        )
        master.shutdown()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals on this loop
            loop.add_signal_handler(sig, stop, sig)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    if args.command == "replay":
        if args.save_fixture:
            from .capture._save_fixture import save_fixtures

            return save_fixtures(args.paths, args.save_fixture, out=sys.stdout)
        from .capture._replay import run_replay

        return run_replay(args.paths, as_json=args.json, out=sys.stdout)
    from mitmproxy.exceptions import OptionsError

    from .process._loop import loop_factory
    from .process._workers import (
        REUSE_PORT_ENV,
        WORKER_ENV,
        parse_workers,
        run_workers,
        tcp_only_reverse,
    )

    try:
        workers = parse_workers(args.workers)
    except ValueError as exc:
        sys.stderr.write(f"kimi-free-api: --workers: {exc} (a number >= 1, or auto)\n")
        return 2
    if workers > 1:
        if args.command == "demo":
            sys.stderr.write("kimi-free-api: --workers applies to run, not demo\n")
            return 2
        if not args.port:
            sys.stderr.write("kimi-free-api: --workers needs a fixed --port (not 0)\n")
            return 2
        return run_workers(argv, workers, confdir=args.confdir)
    factory = loop_factory(reuse_port=os.environ.get(REUSE_PORT_ENV) == "1")
    if os.environ.get(WORKER_ENV, "0") != "0":
        tcp_only_reverse()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args, demo=args.command == "demo"), loop_factory=factory)
    except OptionsError as exc:
        # A bad config file or option: the message lists every problem; a traceback would
        # only bury it.
        sys.stderr.write(f"kimi-free-api: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
