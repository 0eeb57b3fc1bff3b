"""``SIGHUP`` for a running node: re-read config.toml and apply what can change live.

What applies without a restart: the ``node.log_*`` settings (level, format and file; the file
is reopened, so this is also how to follow ``logrotate`` or a log file moved away) and the
``[fl]`` settings (from the next round on; the schedule restarts on the new interval). Every other
changed setting is named in one ``config.reload_needs_restart`` log line. A config that no
longer loads is refused in one ``config.reload_failed`` line and the node goes on unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from daemon.config import Config, ConfigError, FlSection
from daemon.home import NodeHome
from daemon.logs import LogFileError, configure_logging, event, get_logger

log = get_logger("reload")

#: Settings a running node applies on SIGHUP: the logs here, the FL ones through ``apply_fl``.
LOG_SETTINGS = ("node.log_level", "node.log_format", "node.log_file")
FL_SETTINGS = (
    "fl.round_interval_min",
    "fl.alpha",
    "fl.clip_norm_ratio",
    "fl.robust",
    "fl.trim_fraction",
    "fl.local_steps",
)


def node_log_path(home: NodeHome, config: Config) -> Path | None:
    """Where ``node.log_file`` puts the logs: ``None`` for stderr; a relative path is inside the
    node home (a service's working directory is ``/``)."""
    if not config.node.log_file:
        return None
    return home.root / Path(config.node.log_file).expanduser()


def changed_settings(before: Config, after: Config) -> list[str]:
    """The ``section.key`` names whose values differ."""
    changed = []
    for section in dataclasses.fields(before):
        old, new = getattr(before, section.name), getattr(after, section.name)
        for spec in dataclasses.fields(old):
            if getattr(old, spec.name) != getattr(new, spec.name):
                changed.append(f"{section.name}.{spec.name}")
    return changed


def reload_config(
    home: NodeHome,
    running: Config,
    load: Callable[[], Config],
    *,
    apply_fl: Callable[[FlSection], None] | None = None,
) -> Config | None:
    """Load the config again with ``load``; apply the live settings (the ``[fl]`` ones through
    ``apply_fl`` when given); return the new config, or ``None`` when it could not be loaded
    or its log file opened (the node then keeps what it runs with)."""
    try:
        fresh = load()
    except ConfigError as error:
        event(log, logging.ERROR, "config.reload_failed", home=home.root, reason=str(error))
        return None
    node = fresh.node
    try:
        configure_logging(
            log_format=node.log_format,
            level=node.log_level,
            log_file=node_log_path(home, fresh),
        )
    except LogFileError as error:
        event(log, logging.ERROR, "config.reload_failed", home=home.root, reason=str(error))
        return None
    live: tuple[str, ...] = LOG_SETTINGS
    if apply_fl is not None:
        apply_fl(fresh.fl)
        live += FL_SETTINGS
    changed = changed_settings(running, fresh)
    applied = [key for key in changed if key in live]
    pending = [key for key in changed if key not in live]
    event(log, logging.INFO, "config.reloaded", applied=",".join(applied) or "none")
    if pending:
        event(log, logging.WARNING, "config.reload_needs_restart", settings=",".join(pending))
    return fresh
