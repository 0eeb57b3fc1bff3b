"""The ``parley`` command line.

Every expected failure (a bad config, a missing identity, a bad input file) ends as one line on
stderr and exit code 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import daemon.offline  # noqa: F401  (must come before any dependency that phones home)

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from daemon.atomic import write_atomic
from daemon.config import ConfigError, load_config, render_default_config
from daemon.home import NodeHome, default_home
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

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home", help="Node home folder [default: $PARLEY_HOME or ~/.local/share/parley]."
    ),
]


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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the app, turning expected failures into one line."""
    try:
        app(args=argv, prog_name="parley", standalone_mode=False)
    except (UserError, ConfigError, IdentityError) as error:
        print(f"parley: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except typer.Abort:
        print("parley: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except Exception as error:  # click's usage errors arrive here in non-standalone mode
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise


if __name__ == "__main__":
    main()
