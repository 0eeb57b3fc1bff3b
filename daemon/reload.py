"""``SIGHUP`` for a running node: re-read config.toml and apply what can change live.

What applies without a restart (:data:`LIVE_SETTINGS` says when, for each setting):

- the ``node.log_*`` settings, at once (the log file is reopened, so this is also how to follow
  ``logrotate`` or a log file moved away);
- the ``[fl]`` settings, from the next round on (the schedule restarts on the new interval);
- the ``[models]`` settings, from the next caption or dub job (the job runner drops the models
  and translators it holds and loads them again as the new settings say; a job already running
  finishes with what it started with). Calls keep theirs until a restart.

Everything else (listening address, discovery, trust, sessions, calls, storage bounds, the web
page) is wired into objects built at start and needs a restart. Every changed setting gets one
log line, ``config.setting key=... applied=<when>`` or ``config.setting key=... applied=no
needs=restart``, after the summary lines ``config.reloaded applied=...`` and
``config.reload_needs_restart settings=...``. A config that no longer loads is refused in one
``config.reload_failed`` line and the node goes on unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from daemon.config import Config, ConfigError, FlSection
from daemon.home import NodeHome
from daemon.logs import LogFileError, configure_logging, event, get_logger

log = get_logger("reload")

#: Settings a running node applies on SIGHUP: the logs here, the FL ones through ``apply_fl``.
LOG_SETTINGS = ("node.log_level", "node.log_format", "node.log_file")
FL_SETTINGS = (
    "fl.round_interval_min",
    "fl.personalization",
    "fl.alpha",
    "fl.clip_norm_ratio",
    "fl.robust",
    "fl.trim_fraction",
    "fl.local_steps",
)
MODEL_SETTINGS = (
    "models.whisper",
    "models.whisper_dir",
    "models.translation_backend",
    "models.translation_dir",
    "models.cpu_threads",
)
#: Each setting a running node applies on SIGHUP, and from when (``applied=`` in the log).
LIVE_SETTINGS: Final[Mapping[str, str]] = {
    **dict.fromkeys(LOG_SETTINGS, "now"),
    **dict.fromkeys(FL_SETTINGS, "next_round"),
    **dict.fromkeys(MODEL_SETTINGS, "next_job"),
}


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
    apply_jobs: Callable[[Config], None] | None = None,
) -> Config | None:
    """Load the config again with ``load``; apply the live settings (the ``[fl]`` ones through
    ``apply_fl``, the ``[models]`` ones through ``apply_jobs``, when given); return the new
    config, or ``None`` when it could not be loaded or its log file opened (the node then keeps
    what it runs with). One log line per changed setting says whether and when it applies."""
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
    if apply_jobs is not None:
        apply_jobs(fresh)
        live += MODEL_SETTINGS
    changed = changed_settings(running, fresh)
    applied = [key for key in changed if key in live]
    pending = [key for key in changed if key not in live]
    event(log, logging.INFO, "config.reloaded", applied=",".join(applied) or "none")
    if pending:
        event(log, logging.WARNING, "config.reload_needs_restart", settings=",".join(pending))
    for key in changed:
        if key in live:
            event(log, logging.INFO, "config.setting", key=key, applied=LIVE_SETTINGS[key])
        else:
            event(log, logging.WARNING, "config.setting", key=key, applied="no", needs="restart")
    return fresh
