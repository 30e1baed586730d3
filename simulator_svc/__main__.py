"""python -m simulator_svc: the simulated client (and, as sub-commands, the
operator's tools).

    python -m simulator_svc [--mode text] [--conversations N] [--utterances K|FILE] ...
    python -m simulator_svc --gateway http://HOST:PORT [--api-key KEY] ...   (through the front door)
    python -m simulator_svc --gateway URL --mode audio --barge-in ...        (speaks over the answers)
    python -m simulator_svc --gateway URL --mode text --cancel-after-ms N   (response.cancel mid-answer)
    python -m simulator_svc monitor [--once] [--svg FILE]
    python -m simulator_svc dialogue CONVERSATION_ID
    python -m simulator_svc dead list | dead replay DEAD_ID [--raw JSON]
    python -m simulator_svc owners
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

from shared.bus.resp import open_redis
from shared.process import install_fast_loop
from shared.settings import ConnectionSettings, InvalidSettings, env_name, load_settings
from simulator_svc import admin, monitor
from simulator_svc.simulator import (
    DEFAULT_UTTERANCES,
    DialoguePrinter,
    Simulation,
    SimulationPlan,
    generated_utterances,
    print_summary,
)
from simulator_svc.tracker import succeeded


def _utterances(value: str | None) -> list[str]:
    if value is None:
        return list(DEFAULT_UTTERANCES)
    if value.isdigit():
        return generated_utterances(int(value))
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"--utterances: {value!r} is neither a count nor a readable file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [line for line in lines if line]
    if not texts:
        raise argparse.ArgumentTypeError(f"--utterances: {value} holds no utterance (one per line)")
    return texts


def _client_key_from_env() -> str | None:
    """$GATEWAY_CLIENT_KEY, else the first key of the file $GATEWAY_CLIENT_KEY_FILE (a compose secret)."""
    key = os.environ.get("GATEWAY_CLIENT_KEY")
    path = os.environ.get("GATEWAY_CLIENT_KEY_FILE")
    if not key and path:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
        key = next((line for line in lines if line and not line.startswith("#")), None)
    return key or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator_svc",
        description=(
            "Simulated client: starts conversations, sends utterances, prints the answers "
            "as they stream. Exits 0 only when every utterance got exactly one response.done."
        ),
    )
    parser.add_argument("--mode", choices=["text", "audio"], default="text",
                        help="text: utterance.text entries; audio: synthesized speech as PCM16 24 kHz chunks")
    parser.add_argument("--wav", action="append", metavar="FILE",
                        help="audio mode: send this recording (any rate/channels) instead of synthesized speech; "
                             "repeat for several utterances")
    parser.add_argument("--chunk-ms", type=float, default=100.0, help="audio chunk length (default 100 ms)")
    parser.add_argument("--realtime-factor", type=float, default=1.0,
                        help="audio mode: send this many times faster than real time (load tests)")
    parser.add_argument("--conversations", type=int, default=1, metavar="N")
    parser.add_argument("--utterances", metavar="K|FILE",
                        help="K generated utterances, or a file with one utterance per line "
                             "(default: the seed example's phrases)")
    parser.add_argument("--no-greeting", action="store_true", help="skip the greeting turn")
    parser.add_argument("--rate", type=float, default=2.0, metavar="R",
                        help="utterances per second per conversation (default 2)")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="S", help="give up after S seconds")
    parser.add_argument("--max-in-flight", type=int, default=0, help="bound on unanswered utterances (0: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON summary object (and no dialogue)")
    gateway = parser.add_argument_group(
        "through the gateway", "be a Realtime API client of a gateway_svc instead of writing Redis")
    gateway.add_argument("--gateway", metavar="URL", help="the gateway's address, e.g. http://localhost:8080")
    gateway.add_argument("--api-key", help="the gateway key (default: $GATEWAY_CLIENT_KEY, or the first key of "
                         "the file $GATEWAY_CLIENT_KEY_FILE; none: anonymous)")
    gateway.add_argument("--audio-out", action="store_true",
                         help="ask for spoken answers (the API's default) and measure them (bytes, first audio)")
    gateway.add_argument("--barge-in", action="store_true",
                         help="audio mode: speak each utterance after the first over the previous answer, as "
                              "soon as its first audio arrives (implies --audio-out); counts the cancelled "
                              "answers and measures the cancel latency")
    gateway.add_argument("--cancel-after-ms", type=float, metavar="N",
                         help="send response.cancel N ms after each answer's first output delta; counts the "
                              "cancelled answers and measures the cancel latency")
    _connection_args(parser)
    parser.epilog = "operator tools: " + ", ".join(TOOLS) + " (python -m simulator_svc TOOL --help)"
    return parser


async def _simulate(args: argparse.Namespace, conn: ConnectionSettings) -> int:
    try:
        utterances = _utterances(args.utterances)
    except argparse.ArgumentTypeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    recordings: list[tuple[str, bytes]] = []
    for path in args.wav or []:
        from simulator_svc.wav import WavError, read_wav

        try:
            recordings.append((f"(recording {Path(path).name})", read_wav(path)))
        except WavError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if recordings and args.mode != "audio":
        print("error: --wav needs --mode audio", file=sys.stderr)
        return 2
    plan = SimulationPlan(
        mode=args.mode,
        recordings=recordings,
        chunk_ms=args.chunk_ms,
        realtime_factor=args.realtime_factor,
        conversations=args.conversations,
        utterances=utterances,
        greeting=not args.no_greeting,
        rate=args.rate,
        timeout_s=args.timeout,
        max_in_flight=args.max_in_flight,
    )
    printer = DialoguePrinter(None if args.json else sys.stdout, plan.conversations)
    if args.gateway is not None:
        from simulator_svc.gateway_mode import GatewaySimulation, Interruptions

        try:
            gateway_sim = GatewaySimulation(plan, printer, args.gateway,
                                            args.api_key or _client_key_from_env(),
                                            audio_out=args.audio_out or args.barge_in,
                                            interruptions=Interruptions(args.barge_in, args.cancel_after_ms))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        summary = await gateway_sim.run()
    else:
        if args.api_key or args.audio_out or args.barge_in or args.cancel_after_ms is not None:
            print("error: --api-key, --audio-out, --barge-in and --cancel-after-ms go with --gateway",
                  file=sys.stderr)
            return 2
        redis = await open_redis(conn)
        try:
            summary = await Simulation(redis, conn.keys, plan, printer,
                                       (conn.redis_wait_replicas, conn.redis_wait_timeout_ms)).run()
        finally:
            await redis.aclose()
    if args.json:
        print(json.dumps(summary))
    else:
        print_summary(summary)
    return 0 if succeeded(summary) else 1


TOOLS = ("monitor", "dialogue", "dead", "owners")


#: The options that override ConnectionSettings (unset: its environment variable, then its default).
CONNECTION_OPTIONS = {"redis_url": "--redis-url", "key_prefix": "--key-prefix", "partitions": "--partitions"}


def _connection_args(parser: argparse.ArgumentParser) -> None:
    for field, option in CONNECTION_OPTIONS.items():
        default = ConnectionSettings.model_fields[field].default
        shown = default.get_secret_value() if isinstance(default, SecretStr) else default
        parser.add_argument(option, type=int if field == "partitions" else str,
                            help=f"default: ${env_name(ConnectionSettings, field)}, else {shown}")


def connection_settings(args: argparse.Namespace) -> ConnectionSettings:
    """The options given, over the environment (one parse: ConnectionSettings). Raises InvalidSettings."""
    given = {field: getattr(args, field) for field in CONNECTION_OPTIONS if getattr(args, field) is not None}
    return load_settings(ConnectionSettings, given)


def build_tools_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulator_svc", description="Operator tools (read Redis).")
    sub = parser.add_subparsers(dest="tool", required=True)
    mon = sub.add_parser("monitor", help="live view: workers, ownership, lag, dead letters, latency")
    monitor.add_arguments(mon)
    _connection_args(mon)
    dia = sub.add_parser("dialogue", help="print one conversation's whole dialogue with timings")
    dia.add_argument("conversation_id")
    _connection_args(dia)
    dead = sub.add_parser("dead", help="list or replay dead letters")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    dl = dead_sub.add_parser("list", help="newest first, with reasons")
    dl.add_argument("--limit", type=int, default=50)
    _connection_args(dl)
    dr = dead_sub.add_parser("replay", help="put a dead letter back on its stream (once)")
    dr.add_argument("dead_id", help="the dead letter's entry id, as `dead list` shows it")
    dr.add_argument("--raw", help="the fixed entry JSON to replay instead of the original")
    _connection_args(dr)
    own = sub.add_parser("owners", help="which worker owns each conversation's sessions")
    _connection_args(own)
    return parser


async def _tool(args: argparse.Namespace, conn: ConnectionSettings) -> int:
    redis = await open_redis(conn)
    keys = conn.keys
    try:
        if args.tool == "monitor":
            source = urlsplit(conn.redis_url.get_secret_value())
            await monitor.run_monitor(redis, keys, f"{source.hostname}:{source.port or 6379}", args.interval,
                                      args.once, args.svg)
            return 0
        if args.tool == "dialogue":
            return await admin.print_dialogue(redis, keys, args.conversation_id)
        if args.tool == "owners":
            return await admin.print_owners(redis, keys)
        if args.dead_command == "list":
            return await admin.list_dead(redis, keys, args.limit)
        try:
            await admin.replay_dead(redis, keys, args.dead_id, args.raw)
        except admin.AdminError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    install_fast_loop()
    tool = bool(argv[:1]) and argv[0] in TOOLS
    args = (build_tools_parser() if tool else build_parser()).parse_args(argv)
    try:
        conn = connection_settings(args)
    except InvalidSettings as exc:
        print(exc, file=sys.stderr)
        return 2
    if not tool:
        return asyncio.run(_simulate(args, conn))
    try:
        return asyncio.run(_tool(args, conn))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
