"""The ``parley`` command line.

Every expected failure ends as one line on stderr, never a traceback (those are for bugs):
exit code 2 for a bad input (config, flag, identity, file), 1 for a runtime failure (the port is
in use, another node already runs on this home), and 3 from ``parley status`` when no node runs.
"""

from __future__ import annotations

import common.offline  # noqa: F401  (must come before any dependency that phones home)

import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from common.atomic import write_atomic
from daemon.cli_options import HomeOption, JsonFlag, LogFileOption, PortOption
from daemon.config import (
    Config,
    Override,
    SourcedConfig,
    load_config,
    load_sourced_config,
    render_default_config,
)
from daemon.home import NodeHome

if TYPE_CHECKING:
    import click

    from daemon.database import Database
    from daemon.database import PeerRecord as PeerRecordType
    from daemon.database import TrustState as TrustStateType
    from daemon.node import RunningNode
    from daemon.peers import PeerTable
from daemon.cli_support import (
    EXIT_NOT_RUNNING,
    EXIT_USER_ERROR,
    UserError,
    fail,
    print_json,
    require_home,
    resolve_home,
    stdout,
)
from daemon.errors import DaemonError
from daemon.identity import Identity, load_identity, save_identity

app = typer.Typer(
    name="parley",
    help="A peer-to-peer node for translated calls over personal speech codecs.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    # Inherited by every subcommand's context: -h works wherever --help does.
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        from daemon.version import parley_version

        print(f"parley {parley_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Print parley's version and exit.",
        ),
    ] = False,
) -> None:
    """A peer-to-peer node for translated calls over personal speech codecs."""


def _expected_errors() -> tuple[type[Exception], ...]:
    """Failures that are the user's input or environment, shown as one line, never a trace:
    every package's error root is a ParleyError (common.errors), and the system's OSError."""
    from common.errors import ParleyError

    return (ParleyError, OSError)


@app.command()
def init(
    home: HomeOption = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing identity.")] = False,
    as_json: JsonFlag = False,
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
    # The shipped starting codec is ours until we enroll, so a fresh home can call at once.
    from codec.config import CodecConfig
    from daemon.codec_store import CodecStore

    CodecStore(node_home.models_dir, node_home.features_dir, CodecConfig()).current()
    if as_json:
        print_json({"home": str(node_home.root), "peer_id": identity.peer_id})
        return
    stdout.print(f"initialised {node_home.root}")
    stdout.print(f"peer id     {identity.peer_id}")


@app.command("id")
def show_id(home: HomeOption = None, as_json: JsonFlag = False) -> None:
    """Print this node's peer id and public key."""
    node_home = require_home(home)
    identity = load_identity(node_home.identity_path)
    if as_json:
        print_json({"peer_id": identity.peer_id, "public_key": identity.public_key.hex()})
        return
    stdout.print(f"peer id     {identity.peer_id}", highlight=False)
    stdout.print(f"public key  {identity.public_key.hex()}", highlight=False)


def _node_settings(node_home: NodeHome, port: int | None, log_file: Path | None) -> SourcedConfig:
    """config.toml with ``parley node``'s flags applied, checked like the file's values."""
    overrides = []
    if port is not None:
        overrides.append(Override(key="listen.port", value=port, flag="--port"))
    if log_file is not None:
        # Relative to where the command runs, as a user typing it expects.
        absolute = str(log_file.expanduser().absolute())
        overrides.append(Override(key="node.log_file", value=absolute, flag="--log-file"))
    return load_sourced_config(node_home.config_path).with_overrides(overrides)


@app.command("config")
def check_config(
    home: HomeOption = None,
    port: PortOption = None,
    log_file: LogFileOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Validate config.toml and print the settings in effect as TOML, each with its source
    (default, file or flag); give ``parley node``'s flags to see what they change."""
    from daemon.config import render_sourced_config, sourced_config_dict

    sourced = _node_settings(resolve_home(home), port, log_file)
    if as_json:
        print_json(sourced_config_dict(sourced))
    else:
        print(render_sourced_config(sourced), end="")


@app.command()
def doctor(
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check a node home (identity, config, database, checkpoints, file modes); say what to do."""
    import json

    from daemon.doctor import Severity, examine_home

    node_home = resolve_home(home)
    findings = examine_home(node_home)
    if as_json:
        print(json.dumps([finding.as_dict() for finding in findings], indent=2))
    else:
        for finding in findings:
            mark = {"ok": "ok", "warning": "WARNING", "problem": "PROBLEM"}[finding.severity]
            stdout.print(f"{mark:8} {finding.check:11} {finding.message}", highlight=False)
            if finding.fix:
                stdout.print(f"{'':8} {'':11} -> {finding.fix}", highlight=False)
    if any(finding.severity is not Severity.OK for finding in findings):
        raise typer.Exit(1)


def _load(home: Path | None) -> tuple[NodeHome, Config]:
    node_home = require_home(home)
    return node_home, load_config(node_home.config_path)


@app.command()
def node(
    home: HomeOption = None,
    port: PortOption = None,
    log_file: LogFileOption = None,
    open_browser: Annotated[
        bool,
        typer.Option("--open", help="Print the web page's login link and open it in a browser."),
    ] = False,
) -> None:
    """Run the node: announce, keep the peer table, accept handshakes, run FL rounds.

    Logs go to stderr (the journal under systemd) unless node.log_file or --log-file names a
    file. SIGHUP re-reads config.toml and applies the node.log_* (now), fl.* (next round) and
    models.* (next caption job) settings; others need a restart (one log line per setting).
    """
    import trio

    from daemon.logs import configure_logging
    from daemon.node import NodeOptions, run_node
    from daemon.reload import node_log_path

    node_home = require_home(home)
    config = _node_settings(node_home, port, log_file).config
    configure_logging(
        log_format=config.node.log_format,
        level=config.node.log_level,
        log_file=node_log_path(node_home, config),
    )

    def show_page(running: RunningNode) -> None:
        from urllib.parse import quote

        from daemon.web.auth import load_or_create_token

        link = f"{running.web_url}/login?token={quote(load_or_create_token(node_home.root))}"
        print(f"web page: {link}", flush=True)
        import webbrowser

        webbrowser.open(link)

    in_effect = [config]  # what the node runs with now: each reload compares with the last

    def reload(running: RunningNode) -> None:
        from daemon.reload import reload_config

        fresh = reload_config(
            node_home,
            in_effect[0],
            lambda: _node_settings(node_home, port, log_file).config,
            apply_fl=running.apply_fl_settings,
            apply_jobs=running.job_runner.update_config,
        )
        if fresh is not None:
            in_effect[0] = fresh

    options = NodeOptions(on_web_started=show_page if open_browser else None)
    trio.run(partial(run_node, node_home, config, options, on_reload=reload))


def _rpc(node_home: NodeHome, method: str, params: dict[str, object] | None = None) -> object:
    from daemon.rpc_client import RpcCallError, RpcClientError, RpcUnavailableError, call_sync

    try:
        return call_sync(node_home.socket_path, method, params)
    except RpcUnavailableError:
        fail(
            f"no node is running with home {node_home.root} (start one with 'parley node')",
            exit_code=EXIT_NOT_RUNNING,
        )
    except RpcCallError as error:
        fail(f"{method}: {error}")
    except RpcClientError as error:
        fail(f"{method}: {error}")


@app.command()
def status(home: HomeOption = None, as_json: JsonFlag = False) -> None:
    """What the running node is doing: peers, sessions, rounds, jobs.

    Exit code 3 when no node runs on this home (``--json`` then says ``"running": false``).
    """
    from daemon.rpc_client import RpcUnavailableError, call_sync
    from daemon.status_view import render_status
    from daemon.version import parley_version

    node_home = require_home(home)
    try:
        first = call_sync(node_home.socket_path, "status")
    except RpcUnavailableError:
        if as_json:
            print_json({"running": False, "home": str(node_home.root), "version": parley_version()})
        else:
            print(f"parley node: not running (home {node_home.root}); start it with 'parley node'")
        raise typer.Exit(EXIT_NOT_RUNNING) from None
    version = first.get("version") if isinstance(first, dict) else None
    report = {"running": True, "version": version, "status": first}
    report.update(
        {method: _rpc(node_home, method) for method in ("peers", "sessions", "rounds", "jobs")}
    )
    if as_json:
        print_json(report)
    else:
        render_status(stdout, report)


@app.command()
def web(
    home: HomeOption = None,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Also open the page in a browser.")
    ] = False,
) -> None:
    """Print the running node's web page address with its login token."""
    from urllib.parse import quote

    from daemon.web.auth import TokenFileError, load_or_create_token

    node_home = require_home(home)
    info = _rpc(node_home, "web.info")
    url = info.get("url") if isinstance(info, dict) else None
    if not isinstance(url, str):
        fail("the running node serves no web page (is [web] enabled, its port free? see its log)")
    try:
        token = load_or_create_token(node_home.root)
    except TokenFileError as error:
        fail(str(error))
    link = f"{url}/login?token={quote(token)}"
    print(link)
    if open_browser:
        import webbrowser

        if not webbrowser.open(link):
            print("parley: no browser could be opened; open the link above", file=sys.stderr)


peers_app = typer.Typer(
    help="The trust list: who may receive our weights and be aggregated.", no_args_is_help=True
)
app.add_typer(peers_app, name="peers")


def _peer_table(node_home: NodeHome) -> tuple[Database, PeerTable]:
    from daemon.database import PeerStore, open_database
    from daemon.peers import PeerTable

    node_home = require_home(node_home.root)
    our_key = load_identity(node_home.identity_path).public_key
    database = open_database(node_home.database_path)
    return database, PeerTable(PeerStore(database), ttl=1.0, our_key=our_key)


@peers_app.command("list")
def peers_list(home: HomeOption = None, as_json: JsonFlag = False) -> None:
    """Every peer we know, with its trust state."""
    from daemon.status_view import render_peers
    from daemon.views import peer_views, to_wire

    database, table = _peer_table(resolve_home(home))
    with database:
        rows = peer_views(table.known(), table.pending_key_changes())
    if as_json:
        print_json(to_wire(rows))
    else:
        render_peers(stdout, rows)


FingerprintOption = Annotated[
    str | None,
    typer.Option(
        "--fingerprint",
        metavar="FP",
        help="The key's fingerprint (shown by 'parley peers list'); needed with a name.",
    ),
]
YesOption = Annotated[
    bool, typer.Option("--yes", help="Do not ask; only with the full key, never a name.")
]


def _print_peer(record: PeerRecordType) -> None:
    from daemon.peers import fingerprint

    shown = record.name or "(no name)"
    stdout.print(
        f"{shown}: {record.trust.value} (fingerprint {fingerprint(record.public_key)})",
        highlight=False,
    )


def _confirm_key(
    what: str, key_or_name: str, public_key: bytes, typed: str | None, yes: bool
) -> None:
    """Make sure the user means this key, not whoever holds a name now (see daemon.peers).

    A full key is the identity itself. Anything else (a name, an id prefix) needs the
    fingerprint back, on the command line or typed at a terminal; ``--yes`` cannot stand in.
    """
    from daemon.peers import InvalidPeerKeyError, fingerprint, matches_fingerprint, parse_peer_key

    try:
        if parse_peer_key(key_or_name) == public_key:
            return
    except InvalidPeerKeyError:
        pass
    shown = fingerprint(public_key)
    if yes:
        fail(f"--yes needs the full key, not {key_or_name!r}: a name can be announced by anyone")
    if typed is not None:
        if not matches_fingerprint(public_key, typed):
            fail(
                f"{key_or_name!r} now has fingerprint {shown}, not {typed!r}; refusing to {what} "
                "it (check the key with its owner)"
            )
        return
    if not sys.stdin.isatty():
        fail(
            f"{key_or_name!r} has fingerprint {shown}; to {what} it, repeat it with "
            f"--fingerprint {shown} (after checking it with its owner) or give the full key"
        )
    stdout.print(f"{key_or_name}: fingerprint {shown}", highlight=False)
    answer = typer.prompt("Type the fingerprint to confirm (check it with its owner)")
    if not matches_fingerprint(public_key, answer):
        fail(f"fingerprint does not match {shown}; nothing changed")


def _change_trust(
    home: Path | None,
    key_or_name: str,
    state: TrustStateType,
    *,
    typed: str | None = None,
    yes: bool = False,
    confirm: bool = True,
) -> None:
    from daemon.database import TrustState
    from daemon.peers import (
        InvalidPeerKeyError,
        PeerError,
        UnknownPeerError,
        matches_fingerprint,
        parse_peer_key,
    )

    database, table = _peer_table(resolve_home(home))
    with database:
        try:
            try:
                found = table.resolve(key_or_name)
            except UnknownPeerError:
                offered = [
                    change.offered_key
                    for change in table.pending_key_changes()
                    if matches_fingerprint(change.offered_key, key_or_name)
                ]
                if state is TrustState.BLOCKED and len(set(offered)) == 1:
                    # The key that tried to take a pinned name: blockable by its fingerprint.
                    record = table.add_by_key(offered[0], trust=state)
                    _print_peer(record)
                    return
                try:
                    key = parse_peer_key(key_or_name)
                except InvalidPeerKeyError:
                    raise UnknownPeerError(
                        f"no known peer named {key_or_name!r}; give its full key to "
                        f"{state.value.removesuffix('ed')} it before it is seen"
                    ) from None
                # A full key typed by the user: allowed before the key was ever seen.
                record = table.add_by_key(key, trust=state)
            else:
                if confirm:
                    _confirm_key(state.value, key_or_name, found.public_key, typed, yes)
                record = table.add_by_key(found.public_key, trust=state)
        except PeerError as error:
            fail(str(error))
    _print_peer(record)


PeerArgument = typer.Argument(
    metavar="KEY|NAME", help="The peer's full key, its name, or a unique id prefix."
)


@peers_app.command("trust")
def peers_trust(
    key_or_name: Annotated[str, PeerArgument],
    home: HomeOption = None,
    typed: FingerprintOption = None,
    yes: YesOption = False,
) -> None:
    """Trust a peer: it receives our weights and its bundles are aggregated.

    By name, the key's fingerprint must be given back (--fingerprint, or typed at a prompt).
    """
    from daemon.database import TrustState

    _change_trust(home, key_or_name, TrustState.TRUSTED, typed=typed, yes=yes)


@peers_app.command("untrust")
def peers_untrust(key_or_name: Annotated[str, PeerArgument], home: HomeOption = None) -> None:
    """Stop trusting a peer (it stays known and pinned)."""
    from daemon.database import TrustState

    _change_trust(home, key_or_name, TrustState.KNOWN, confirm=False)


@peers_app.command("block")
def peers_block(key_or_name: Annotated[str, PeerArgument], home: HomeOption = None) -> None:
    """Block a peer: its handshakes are refused and it gets nothing from us."""
    from daemon.database import TrustState

    _change_trust(home, key_or_name, TrustState.BLOCKED, confirm=False)


@peers_app.command("forget")
def peers_forget(
    key_or_name: Annotated[str, PeerArgument],
    home: HomeOption = None,
    typed: FingerprintOption = None,
    yes: YesOption = False,
) -> None:
    """Remove a peer from the trust list; the name it pinned is free again.

    By name, the key's fingerprint must be given back, as for trust.
    """
    from daemon.peers import PeerError

    database, table = _peer_table(resolve_home(home))
    with database:
        try:
            found = table.resolve(key_or_name)
            _confirm_key("forget", key_or_name, found.public_key, typed, yes)
            table.forget(found.public_key.hex())
        except PeerError as error:
            fail(str(error))
    stdout.print(f"forgot {found.name or '(no name)'}", highlight=False)


@peers_app.command("accept-key")
def peers_accept_key(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="The pinned name announced with a new key.")
    ],
    home: HomeOption = None,
    typed: FingerprintOption = None,
    key: Annotated[
        str | None, typer.Option("--key", help="The new key in full (instead of --fingerprint).")
    ] = None,
) -> None:
    """Accept the new key a pinned name was announced with (see 'parley peers list').

    The new key's fingerprint (or the full key) must be given; the old key loses the name and
    any trust, and the new one is pinned as known: trust it separately.
    """
    from daemon.peers import PeerError, fingerprint, parse_peer_key

    database, table = _peer_table(resolve_home(home))
    with database:
        try:
            offers = [change for change in table.pending_key_changes() if change.name == name]
            if not offers:
                fail(f"no pending key change for {name!r}")
            if key is not None:
                wanted = parse_peer_key(key)
                if all(change.offered_key != wanted for change in offers):
                    fail(f"{name!r} was not offered with that key")
                change = table.accept_key(name, wanted)
            else:
                # Several keys may claim the name: the fingerprint says which one is meant.
                from daemon.peers import matches_fingerprint

                if typed is None:
                    shown = ", ".join(fingerprint(change.offered_key) for change in offers)
                    fail(
                        f"{name!r} was offered with key(s) {shown}; repeat the right one with "
                        "--fingerprint (after checking it with its owner) or give --key"
                    )
                chosen = [c for c in offers if matches_fingerprint(c.offered_key, typed)]
                if not chosen:
                    fail(f"no key offered for {name!r} has fingerprint {typed!r}")
                change = table.accept_key(name, chosen[0].offered_key)
        except PeerError as error:
            fail(str(error))
    stdout.print(
        f"{name}: now pinned to {fingerprint(change.offered_key)} (known; "
        f"was {fingerprint(change.pinned_key)})",
        highlight=False,
    )


@app.command("round")
def start_round(
    home: HomeOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the round and print it.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Ask the running node for an FL round now."""
    from daemon.status_view import round_summary

    result = _rpc(require_home(home), "round.start", {"wait": wait})
    if as_json:
        print_json(result)
    else:
        stdout.print(round_summary(result), highlight=False)


@app.command()
def enroll(
    files: Annotated[list[Path], typer.Argument(metavar="FILES...", help="Your recordings.")],
    home: HomeOption = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps.")] = 1500,
    as_json: JsonFlag = False,
) -> None:
    """Train this node's personal codec on your own recordings (they never leave this node)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from codec.checkpoint import load_checkpoint, save_checkpoint
    from codec.config import CodecConfig
    from daemon.codec_store import FEATURES_DIGEST_KEY, CodecStore
    from daemon.enroll import enroll as enroll_recordings
    from fl.config import TrainConfig

    node_home, config = _load(home)  # enrolling needs an initialised home
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
    if as_json:
        print_json(
            {
                "recordings": len(result.recordings),
                "speech_s": result.total_frames / 100,
                "mel_l1_before": result.l1_before,
                "mel_l1_after": result.l1_after,
                "kbps": codec_config.kbps,
            }
        )
        return
    stdout.print(
        f"enrolled {len(result.recordings)} recording(s), {result.total_frames / 100:.1f} s of "
        f"speech in all; mel L1 {result.l1_before:.4f} -> {result.l1_after:.4f} "
        f"({codec_config.kbps:.1f} kb/s codec)",
        highlight=False,
    )


# The commands that live in their own modules.
from daemon.call_cli import answer_command, call_command, calls_command, hangup_command  # noqa: E402
from daemon.caption_cli import caption_command  # noqa: E402
from daemon.devices_cli import devices_command  # noqa: E402
from daemon.dub_cli import dub_command  # noqa: E402
from daemon.languages_cli import languages_command  # noqa: E402
from daemon.ping_cli import ping_command  # noqa: E402
from daemon.service_cli import install_service_command  # noqa: E402

app.command("caption")(caption_command)
app.command("devices")(devices_command)
app.command("dub")(dub_command)
app.command("languages")(languages_command)
app.command("call")(call_command)
app.command("calls")(calls_command)
app.command("answer")(answer_command)
app.command("hangup")(hangup_command)
app.command("ping")(ping_command)
app.command("install-service")(install_service_command)


def _register_plugins() -> None:
    """Commands other installed packages add (``parley.commands`` entry points): the lab's
    ``bench``, ``simulate`` and ``codec eval`` come from :mod:`simulations.cli` this way, so the
    product never imports the lab (docs/design.md, "Layers")."""
    from importlib.metadata import entry_points

    for plugin in entry_points(group="parley.commands"):
        plugin.load()(app)


if __name__ != "__main__":  # `python -m daemon.cli` registers them on its import of daemon.cli
    _register_plugins()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the app, turning expected failures into one line."""
    try:
        command = _with_version_everywhere(typer.main.get_command(app))
        returned = command.main(args=argv, prog_name="parley", standalone_mode=False)
    except typer.Abort:
        print("parley: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except Exception as error:
        import click

        if isinstance(error, click.exceptions.NoArgsIsHelpError):
            # `parley` or `parley peers` alone: the help (typer has printed it) is the answer.
            sys.exit(0)
        if isinstance(error, click.ClickException):  # usage errors, in non-standalone mode
            error.show()
            sys.exit(error.exit_code)
        expected = _one_expected_failure(error)
        if expected is None:
            raise
        print(f"parley: {expected}", file=sys.stderr)
        sys.exit(_exit_code(expected))
    # Outside standalone mode click returns a `typer.Exit(code)` raised by a command.
    if isinstance(returned, int) and returned:
        sys.exit(returned)


def _with_version_everywhere(command: click.Command) -> click.Command:
    """``--version`` on every command, not only before the first word: ``parley node
    --version`` is where someone checking a service's version types it. Eager, so it answers
    before any argument is checked."""
    import click

    def show(context: click.Context, _parameter: click.Parameter, value: bool) -> None:
        if value and not context.resilient_parsing:
            _show_version(True)

    pending = [command]
    while pending:
        current = pending.pop()
        if not any("--version" in getattr(p, "opts", ()) for p in current.params):
            current.params.append(
                click.Option(
                    ["--version"],
                    is_flag=True,
                    expose_value=False,
                    is_eager=True,
                    callback=show,
                    help="Print parley's version and exit.",
                )
            )
        if isinstance(current, click.Group):
            pending.extend(current.commands.values())
    return command


def _one_expected_failure(error: BaseException) -> BaseException | None:
    """The failure to show for ``error``: itself, or the first of an exception group (trio's
    nurseries wrap a failed start in groups) when every failure in it is an expected one."""
    leaves: list[BaseException] = []
    pending = [error]
    while pending:
        current = pending.pop(0)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        else:
            leaves.append(current)
    expected = _expected_errors()
    if leaves and all(isinstance(leaf, expected) for leaf in leaves):
        return leaves[0]
    return None


def _exit_code(error: BaseException) -> int:
    """The exit code a failure's type carries (daemon.errors); the user's error otherwise."""
    return error.exit_code if isinstance(error, DaemonError) else EXIT_USER_ERROR


# UserError is re-exported: command modules' failures are caught as daemon.cli's (see below).
__all__ = ["UserError", "app", "main"]


if __name__ == "__main__":
    # `python -m daemon.cli` runs this file as __main__; command modules import daemon.cli and
    # raise *its* UserError, so run that module's main, whose except clauses match them.
    from daemon.cli import main as cli_main

    cli_main()
