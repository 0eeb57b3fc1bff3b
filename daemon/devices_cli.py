"""``parley devices [--json]``: the microphones and speakers PortAudio sees.

A call chooses its devices by index or by name (a unique part is enough); this lists both, and
which ones are the defaults. Registered by ``daemon.cli`` as
``app.command("devices")(devices_command)``.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["devices_command"]


def devices_command(
    *,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List sound devices (microphones and speakers) by index and name, defaults marked."""
    from media.audio_devices import list_devices

    devices = list_devices()
    if as_json:
        print(json.dumps([device.to_json() for device in devices], indent=2))
        return
    console = Console()
    if not devices:
        console.print("no sound devices found")
        return
    table = Table("index", "name", "in", "out", "rate (Hz)", "default", box=None)
    for device in devices:
        default = ", ".join(
            kind
            for kind, flag in (("in", device.default_input), ("out", device.default_output))
            if flag
        )
        table.add_row(
            str(device.index),
            device.name,
            str(device.input_channels),
            str(device.output_channels),
            f"{device.default_rate_hz:g}",
            default,
        )
    console.print(table)
