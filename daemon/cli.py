"""The ``parley`` command line.

Every expected failure (a bad config, a missing identity, a bad input file) ends as one line on
stderr and exit code 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import daemon.offline  # noqa: F401  (must come before any dependency that phones home)

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from daemon.atomic import write_atomic
from daemon.cli_options import HomeOption
from daemon.config import Config, ConfigError, load_config, render_default_config
from daemon.home import NodeHome, default_home

if TYPE_CHECKING:
    from collections.abc import Callable

    from daemon.database import Database
    from daemon.peers import PeerTable
    from fl.flower_app import ClientPlan
from daemon.identity import Identity, IdentityError, load_identity, save_identity

EXIT_USER_ERROR = 2

app = typer.Typer(
    name="parley",
    help="A peer-to-peer node for translated calls over personal speech codecs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console()


def _expected_errors() -> tuple[type[Exception], ...]:
    """Failures that are the user's input or environment, shown as one line, never a trace."""
    from daemon.database import DatabaseError
    from daemon.discovery import DiscoveryError
    from daemon.rpc_server import RpcServerError
    from fl.errors import FLError
    from media.errors import MediaError

    return (DatabaseError, DiscoveryError, RpcServerError, FLError, MediaError, OSError)


class UserError(Exception):
    """An expected failure whose message is the one line the user sees."""


def fail(message: str) -> NoReturn:
    raise UserError(message)


def resolve_home(home: Path | None) -> NodeHome:
    return NodeHome(home if home is not None else default_home())


@app.command()
def init(
    home: HomeOption = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing identity.")] = False,
) -> None:
    """Create a node home: a fresh X25519 identity (0600) and a commented config.toml."""
    node_home = resolve_home(home)
    if node_home.identity_path.exists() and not force:
        fail(f"{node_home.identity_path}: an identity already exists; use --force to replace it")
    node_home.create()
    identity = Identity.generate()
    save_identity(identity, node_home.identity_path, force=force)
    if not node_home.config_path.exists():
        write_atomic(node_home.config_path, render_default_config().encode(), mode=0o600)
    else:
        load_config(node_home.config_path)  # an existing config is kept, but must be valid
    stdout.print(f"initialised {node_home.root}")
    stdout.print(f"peer id     {identity.peer_id}")


@app.command("id")
def show_id(home: HomeOption = None) -> None:
    """Print this node's peer id and public key."""
    node_home = resolve_home(home)
    identity = load_identity(node_home.identity_path)
    stdout.print(f"peer id     {identity.peer_id}", highlight=False)
    stdout.print(f"public key  {identity.public_key.hex()}", highlight=False)


@app.command("config")
def check_config(home: HomeOption = None) -> None:
    """Validate config.toml and print the settings in effect."""
    node_home = resolve_home(home)
    config = load_config(node_home.config_path)
    stdout.print(config)


def _load(home: Path | None) -> tuple[NodeHome, Config]:
    node_home = resolve_home(home)
    return node_home, load_config(node_home.config_path)


@app.command()
def node(
    home: HomeOption = None,
    port: Annotated[int | None, typer.Option("--port", help="Override listen.port.")] = None,
) -> None:
    """Run the node: announce, keep the peer table, accept handshakes, run FL rounds."""
    import trio

    from daemon.logs import configure_logging
    from daemon.node import NodeOptions, run_node

    node_home, config = _load(home)
    configure_logging(log_format=config.node.log_format, level=config.node.log_level)
    trio.run(run_node, node_home, config, NodeOptions(listen_port=port))


def _rpc(node_home: NodeHome, method: str, params: dict[str, object] | None = None) -> object:
    from daemon.rpc_client import RpcCallError, RpcClientError, RpcUnavailableError, call_sync

    try:
        return call_sync(node_home.socket_path, method, params)
    except RpcUnavailableError:
        fail(f"no node is running with home {node_home.root} (start one with 'parley node')")
    except RpcCallError as error:
        fail(f"{method}: {error}")
    except RpcClientError as error:
        fail(f"{method}: {error}")


@app.command()
def status(
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """What the running node is doing: peers, sessions, rounds, jobs."""
    from daemon.status_view import render_status

    node_home = resolve_home(home)
    report = {
        method: _rpc(node_home, method)
        for method in ("status", "peers", "sessions", "rounds", "jobs")
    }
    if as_json:
        import json

        print(json.dumps(report, indent=2, default=str))
    else:
        render_status(stdout, report)


peers_app = typer.Typer(help="The trust list: who may receive our weights and be aggregated.")
app.add_typer(peers_app, name="peers")


def _peer_table(node_home: NodeHome) -> tuple[Database, PeerTable]:
    from daemon.database import PeerStore, open_database
    from daemon.peers import PeerTable

    database = open_database(node_home.database_path)
    return database, PeerTable(PeerStore(database), ttl=1.0)


@peers_app.command("list")
def peers_list(
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every peer we know, with its trust state."""
    from daemon.status_view import peer_rows, render_peers

    database, table = _peer_table(resolve_home(home))
    with database:
        rows = peer_rows(table.known())
    if as_json:
        import json

        print(json.dumps(rows, indent=2))
    else:
        render_peers(stdout, rows)


def _set_trust(home: Path | None, key_or_name: str, trusted: bool) -> None:
    from daemon.database import PeerSource
    from daemon.peers import InvalidPeerKeyError, PeerError, UnknownPeerError, parse_peer_key

    database, table = _peer_table(resolve_home(home))
    with database:
        try:
            try:
                table.resolve(key_or_name)
            except UnknownPeerError:
                try:
                    key = parse_peer_key(key_or_name)
                except InvalidPeerKeyError:
                    raise UnknownPeerError(
                        f"no known peer named {key_or_name!r}; give its full key to trust it "
                        "before it is seen"
                    ) from None
                # A full key typed by the user: trusting it before it was ever seen is allowed.
                table.observe(key, name=None, address=None, source=PeerSource.STATIC)
            record = table.trust(key_or_name) if trusted else table.untrust(key_or_name)
        except PeerError as error:
            fail(str(error))
    from daemon.peers import format_peer_id

    shown = record.name or format_peer_id(record.public_key)[:16]
    stdout.print(f"{shown}: {record.trust.value}", highlight=False)


@peers_app.command("trust")
def peers_trust(
    key_or_name: Annotated[str, typer.Argument(metavar="KEY|NAME")], home: HomeOption = None
) -> None:
    """Trust a peer: it receives our weights and its bundles are aggregated."""
    _set_trust(home, key_or_name, True)


@peers_app.command("untrust")
def peers_untrust(
    key_or_name: Annotated[str, typer.Argument(metavar="KEY|NAME")], home: HomeOption = None
) -> None:
    """Stop trusting a peer (it stays known and pinned)."""
    _set_trust(home, key_or_name, False)


@app.command("round")
def start_round(
    home: HomeOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the round and print it.")] = False,
) -> None:
    """Ask the running node for an FL round now."""
    import json

    result = _rpc(resolve_home(home), "round.start", {"wait": wait})
    print(json.dumps(result, indent=2, default=str))


@app.command()
def enroll(
    files: Annotated[list[Path], typer.Argument(metavar="FILES...", help="Your recordings.")],
    home: HomeOption = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps.")] = 1500,
) -> None:
    """Train this node's personal codec on your own recordings (they never leave this node)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from daemon.codec_store import FEATURES_DIGEST_KEY, CodecStore
    from fl.checkpoint import load_checkpoint, save_checkpoint
    from fl.config import CodecConfig, TrainConfig
    from fl.enroll import enroll as enroll_recordings

    node_home, config = _load(home)
    load_identity(node_home.identity_path)  # enrolling needs an initialised home
    node_home.create()
    codecs = CodecStore(node_home.models_dir, node_home.features_dir, CodecConfig())
    codec_config = codecs.current().config
    train_config = TrainConfig(steps=steps, threads=config.models.cpu_threads)
    with Progress(
        TextColumn("training"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task("train", total=steps, loss=float("nan"))

        def report(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, total=total, loss=loss)

        result = enroll_recordings(
            files,
            checkpoint_path=codecs.checkpoint_path,
            features_dir=codecs.features_dir,
            codec_config=codec_config,
            train_config=train_config,
            progress=report,
        )
    # Record which audio this model was trained on, so the node's next round does not retrain.
    checkpoint = load_checkpoint(codecs.checkpoint_path)
    save_checkpoint(
        codecs.checkpoint_path,
        type(checkpoint)(
            codec_config=checkpoint.codec_config,
            state=checkpoint.state,
            round=checkpoint.round,
            sample_count=checkpoint.sample_count,
            metadata={**checkpoint.metadata, FEATURES_DIGEST_KEY: codecs.features_digest()},
        ),
    )
    stdout.print(
        f"enrolled {len(result.recordings)} recording(s), {result.total_frames / 100:.1f} s of "
        f"speech in all; mel L1 {result.l1_before:.4f} -> {result.l1_after:.4f} "
        f"({codec_config.kbps:.1f} kb/s codec)",
        highlight=False,
    )


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", help="Folder for report.json and the plots.")],
    nodes: Annotated[int, typer.Option("--nodes", min=2, help="Number of nodes.")] = 4,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="FL rounds.")] = 2,
    alpha: Annotated[
        float, typer.Option("--alpha", min=0.0, max=1.0, help="Personalization.")
    ] = 0.7,
    poison: Annotated[int, typer.Option("--poison", min=0, help="Nodes sending bad bundles.")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed for training and poison.")] = 0,
    local_steps: Annotated[int, typer.Option("--local-steps", min=1, help="Steps per round.")] = 60,
    engine: Annotated[str, typer.Option("--engine", help="'real' nodes or 'flower'.")] = "real",
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Flower engine's client data: 'synthetic' log-mel or the speech 'corpus'.",
        ),
    ] = "synthetic",
    mdns: Annotated[bool, typer.Option("--mdns", help="mDNS on 127.0.0.1.")] = False,
    no_wer: Annotated[
        bool, typer.Option("--no-wer", help="Skip the Whisper ΔWER scoring.")
    ] = False,
) -> None:
    """A multi-node FL study of the codec: real nodes over loopback, or Flower's engine."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if engine not in ("real", "flower"):
        fail(f"--engine must be 'real' or 'flower', got {engine!r}")
    if data not in ("synthetic", "corpus"):
        fail(f"--data must be 'synthetic' or 'corpus', got {data!r}")
    if engine == "real" and data != "synthetic":
        fail("--data is for --engine flower: real nodes always train on the speech corpus")
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True
    ) as progress:
        task = progress.add_task("starting", total=1.0)

        def report(what: str, fraction: float) -> None:
            progress.update(task, description=what, completed=fraction)

        if engine == "flower":
            from simulations.flower_sim import run_flower_simulation, small_plan

            plan = small_plan(alpha=alpha, seed=seed)
            if data == "corpus":
                plan = _corpus_plan(plan, nodes=nodes, out=out, progress=report)
            result = run_flower_simulation(
                nodes=nodes, rounds=rounds, alpha=alpha, seed=seed, out_dir=out, plan=plan
            )
        else:
            from simulations.node_sim import SimulationSettings, main_sync

            try:
                settings = SimulationSettings(
                    nodes=nodes,
                    rounds=rounds,
                    alpha=alpha,
                    poison=poison,
                    seed=seed,
                    local_steps=local_steps,
                    mdns=mdns,
                    measure_wer=not no_wer,
                )
            except ValueError as error:
                fail(str(error))
            result = main_sync(settings, out_dir=out, cache_dir=None, progress=report)
    import json

    if engine == "flower":
        last = result["per_round"][-1]
        summary = {
            "data_source": result["data_source"],
            "final_losses": {
                key: last[key] for key in ("local_only_loss", "global_loss", "personal_loss")
            },
        }
        report_name = "flower_simulation.json"
    else:
        summary = {
            key: result[key] for key in ("honest_heldout_l1_final", "personal_best_fraction")
        }
        report_name = "report.json"
    print(json.dumps(summary, indent=2))
    print(f"report: {out / report_name}")  # plain print: rich would wrap a long path


def _corpus_plan(
    plan: ClientPlan, *, nodes: int, out: Path, progress: Callable[[str, float], None]
) -> ClientPlan:
    """``plan`` on log-mel features of the synthesized corpus, one speaker per client (clients
    past the corpus's speakers get shifted variants of them), written under ``out/features``."""
    import dataclasses

    from simulations.corpus import DEFAULT_SPEAKERS, CorpusError, default_cache_dir
    from simulations.flower_sim import prepare_corpus_features

    progress("synthesizing the corpus and its features", 0.0)
    try:
        features = prepare_corpus_features(
            out / "features",
            cache_dir=default_cache_dir(),
            speakers=DEFAULT_SPEAKERS[: min(nodes, len(DEFAULT_SPEAKERS))],
        )
    except CorpusError as error:
        fail(f"cannot build the corpus: {error}")
    return dataclasses.replace(plan, data_source="prepared", data_dir=str(features))


codec_app = typer.Typer(help="The personal speech codec: quality at a bitrate.")
app.add_typer(codec_app, name="codec")


@codec_app.command("eval")
def codec_eval(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the report.")],
    quick: Annotated[bool, typer.Option("--quick", help="A small run (about a minute).")] = False,
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="Corpus cache \\[default: build/corpus].")
    ] = None,
) -> None:
    """ΔWER, mel L1 and bitrate of the codec vs naive mel quantization and Opus, plus FL."""
    import json

    from simulations.codec_eval import run_eval
    from simulations.corpus import default_cache_dir

    result = run_eval(
        out_json=json_path,
        cache_dir=cache_dir if cache_dir is not None else default_cache_dir(),
        quick=quick,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(json.dumps({key: result[key] for key in ("settings", "baselines")}, indent=2))


bench_app = typer.Typer(help="Benchmarks: JSON with ratios against baselines measured in one run.")
app.add_typer(bench_app, name="bench")

JsonOption = Annotated[
    Path | None, typer.Option("--json", help="Also write the JSON report to this file.")
]


@bench_app.command("handshake")
def bench_handshake(json_path: JsonOption = None) -> None:
    """Handshakes per second and transport throughput, against the raw crypto primitives."""
    import json

    from simulations.bench_handshake import run

    print(json.dumps(run(json_path), indent=2))


@bench_app.command("node")
def bench_node(json_path: JsonOption = None) -> None:
    """Two nodes on loopback: start, mDNS discovery, handshake and round times."""
    import json

    from simulations.bench_node import run

    print(json.dumps(run(json_path), indent=2))


@bench_app.command("fl")
def bench_fl(json_path: JsonOption = None) -> None:
    """100 Flower clients x 5 rounds and 16 real nodes x 3 rounds, timed in one run."""
    import json

    from simulations.bench_fl import run

    print(json.dumps(run(json_path), indent=2))


@bench_app.command("call")
def bench_call(
    json_path: JsonOption = None,
    calls: Annotated[
        int, typer.Option("--calls", min=1, max=64, help="Calls at once; >1: the worst call.")
    ] = 1,
) -> None:
    """A real paced call over loopback: caption latency, ASR speed, memory."""
    import json

    from simulations.bench_call import run

    print(json.dumps(run(json_path, calls=calls), indent=2))


@bench_app.command("asr-stream")
def bench_asr_stream(
    json_path: JsonOption = None,
    set_path: Annotated[
        Path | None,
        typer.Option("--set", help="Speech set file (default: the evaluation set)."),
    ] = None,
    voices: Annotated[
        list[str] | None, typer.Option("--voice", help="Only this voice id (repeatable).")
    ] = None,
) -> None:
    """Live captions (through the codec) against offline ones: WERs, lost sentences, CPU."""
    import json

    from simulations.bench_asr_stream import EVAL_SET, EvalSetError, run

    try:
        result = run(json_path, set_path=set_path or EVAL_SET, voices=voices or ())
    except EvalSetError as error:
        fail(str(error))
    print(json.dumps(result, indent=2))


@bench_app.command("reliability")
def bench_reliability(
    json_path: JsonOption = None,
    quick: Annotated[bool, typer.Option("--quick", help="CI-sized budgets (~3 min).")] = False,
) -> None:
    """Fuzzing, hostile peers, kill -9 crash trials, load and multi-host namespaces."""
    import json

    import simulations

    # The scenarios live with the test suite (tests/reliability): this needs a source checkout.
    checkout = Path(simulations.__file__).resolve().parents[1]
    if not (checkout / "tests" / "reliability").is_dir():
        fail(f"parley bench reliability needs a source checkout (no tests/ in {checkout})")
    sys.path.insert(0, str(checkout))
    from simulations.bench_reliability import run

    print(json.dumps(run(json_path, quick=quick), indent=2))


# These command modules import this one lazily (for fail/UserError): register them last.
from daemon.call_cli import call_command  # noqa: E402
from daemon.caption_cli import caption_command  # noqa: E402

app.command("caption")(caption_command)
app.command("call")(call_command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the app, turning expected failures into one line."""
    try:
        app(args=argv, prog_name="parley", standalone_mode=False)
    except typer.Abort:
        print("parley: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except Exception as error:
        import click

        if isinstance(error, click.ClickException):  # usage errors, in non-standalone mode
            error.show()
            sys.exit(error.exit_code)
        if isinstance(error, (UserError, ConfigError, IdentityError, *_expected_errors())):
            print(f"parley: {error}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        raise


if __name__ == "__main__":
    main()
