"""``parley ping PEER``: the command; the network part is :mod:`daemon.ping`."""

from __future__ import annotations

from typing import Annotated

import typer

from daemon.cli_options import HomeOption, JsonFlag


def ping_command(
    peer: Annotated[
        str,
        typer.Argument(
            help="A known peer (name, id or id prefix) or host:port:key.", show_default=False
        ),
    ],
    count: Annotated[
        int, typer.Option("--count", "-c", min=1, max=1000, help="Round trips to time.")
    ] = 4,
    home: HomeOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Handshake time and Ping/Pong round trips to a peer (no trust needed, no weights sent)."""
    from functools import partial

    import trio

    from codec.config import CodecConfig
    from daemon.cli_support import EXIT_RUNTIME_FAILURE, fail, print_json, require_home, stdout
    from daemon.codec_store import CodecStore
    from daemon.database import PeerStore, open_database
    from daemon.discovery import StaticPeerError, parse_static_peer
    from daemon.identity import load_identity
    from daemon.node import CAPABILITIES
    from daemon.peers import PeerError, PeerTable, format_peer_id
    from daemon.ping import PingError, ping_peer
    from handshake.noise import StaticIdentity
    from schemas.messages import PROTOCOL_VERSION, Hello

    node_home = require_home(home)
    identity = load_identity(node_home.identity_path)
    addresses: tuple[tuple[str, int], ...]
    if peer.count(":") >= 2:
        try:
            static = parse_static_peer(peer)
        except StaticPeerError as error:
            fail(str(error))
        key, addresses = static.public_key, ((static.host, static.port),)
        shown = format_peer_id(key)[:16]
    else:
        database = open_database(node_home.database_path)
        with database:
            try:
                record = PeerTable(PeerStore(database), ttl=1.0).resolve(peer)
            except PeerError as error:
                fail(f"unknown peer: {error}")
        key, addresses = record.public_key, record.addresses
        shown = record.name or format_peer_id(key)[:16]
    if not addresses:
        fail(f"no known address for peer {shown} (give host:port:key)")
    store = CodecStore(node_home.models_dir, node_home.features_dir, CodecConfig())
    if not store.checkpoint_path.exists():
        fail(f"no codec in {node_home.root}: start the node once (or run 'parley enroll')")
    ours = store.current()
    hello = Hello(
        protocol_version=PROTOCOL_VERSION,
        capabilities=CAPABILITIES,
        codec_architecture=ours.config.architecture_id,
        codec_version_hash=ours.version_hash,
    )
    try:
        result = trio.run(
            partial(
                ping_peer,
                identity=StaticIdentity(identity.private_key),
                public_key=key,
                addresses=addresses,
                hello=hello,
                count=count,
            )
        )
    except PingError as error:
        fail(f"ping {shown}: {error}", exit_code=EXIT_RUNTIME_FAILURE)
    if as_json:
        print_json({"peer": shown, **result.as_dict()})
        return
    stdout.print(
        f"{shown} at {result.address}: connect {result.connect_s * 1000:.1f} ms, "
        f"handshake {result.handshake_s * 1000:.1f} ms",
        highlight=False,
    )
    for index, trip in enumerate(result.round_trips_s, start=1):
        stdout.print(f"pong {index}: {trip * 1000:.2f} ms", highlight=False)
    trips = sorted(result.round_trips_s)
    stdout.print(
        f"round trip min/median/max {trips[0] * 1000:.2f}/{trips[len(trips) // 2] * 1000:.2f}/"
        f"{trips[-1] * 1000:.2f} ms",
        highlight=False,
    )
