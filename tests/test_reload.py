"""SIGHUP's config reload (daemon.reload): what applies live, what is named for a restart, and
a config or log file that cannot be used changes nothing."""

from __future__ import annotations

import logging

from daemon.config import Config, ConfigError
from daemon.home import NodeHome
from daemon.logs import LOGGER_NAME, configure_logging
from daemon.reload import changed_settings, reload_config


def test_changed_settings_names_each_key():
    before = Config()
    after = before.replace("node", log_level="debug").replace("fl", alpha=0.5)
    assert changed_settings(before, after) == ["node.log_level", "fl.alpha"]
    assert changed_settings(before, before) == []


def test_reload_applies_the_log_settings_and_names_the_rest(tmp_path, caplog):
    home = NodeHome(tmp_path / "home")
    configure_logging(log_format="keyvalue", level="info", log_file=tmp_path / "first.log")
    fresh = Config().replace("node", log_level="debug", log_file="second.log")
    fresh = fresh.replace("fl", alpha=0.5)
    assert reload_config(home, Config(), lambda: fresh) == fresh
    logger = logging.getLogger(LOGGER_NAME)
    assert logger.level == logging.DEBUG
    text = (home.root / "second.log").read_text()
    assert "event=config.reloaded applied=node.log_level,node.log_file" in text
    assert "event=config.reload_needs_restart settings=fl.alpha" in text
    configure_logging(log_format="keyvalue", level="info")


def test_a_config_or_log_file_that_cannot_be_used_changes_nothing(tmp_path):
    home = NodeHome(tmp_path / "home")
    log_path = tmp_path / "node.log"
    configure_logging(log_format="keyvalue", level="info", log_file=log_path)

    def broken() -> Config:
        raise ConfigError("config.toml: listen.port: must be 1..65535, got 70000")

    assert reload_config(home, Config(), broken) is None
    (tmp_path / "a-folder").mkdir()
    unusable = Config().replace("node", log_file=str(tmp_path / "a-folder"), log_level="debug")
    assert reload_config(home, Config(), lambda: unusable) is None
    logger = logging.getLogger(LOGGER_NAME)
    assert logger.level == logging.INFO  # the debug level did not apply either
    text = log_path.read_text()
    assert "event=config.reload_failed" in text and "got 70000" in text
    assert "cannot open the log file" in text
    configure_logging(log_format="keyvalue", level="info")


async def test_reloaded_fl_settings_drive_the_next_rounds_of_a_running_node():
    """A node started with scheduled rounds off gets an interval and a new alpha by reload:
    rounds start on their own and record the new alpha."""
    import trio

    from daemon.database import RoundStatus
    from daemon.node import NodeOptions, open_node
    from simulations.node_helpers import loopback_config, make_home, short_root, wait_for

    with short_root() as root:
        home, _ = make_home(root, "fl")
        config = loopback_config(name="fl", mdns=False)
        assert config.fl.round_interval_min == 0
        async with open_node(home, config, NodeOptions(listen_port=0)) as node:
            await trio.sleep(0.5)
            assert node.rounds.count(status=RoundStatus.COMPLETED) == 0
            fresh = config.replace("fl", round_interval_min=0.005, alpha=0.4)
            assert reload_config(home, config, lambda: fresh, apply_fl=node.apply_fl_settings)
            await wait_for(
                lambda: node.rounds.count(status=RoundStatus.COMPLETED) >= 2,
                timeout=30,
                what="two scheduled rounds",
            )
            assert all(record.alpha == 0.4 for record in node.rounds.recent(limit=2))
        configure_logging(log_format="keyvalue", level="info")


def test_each_changed_setting_gets_a_line_and_models_apply_to_the_next_job(tmp_path):
    """One log line per changed setting says whether and when it applies; the [models]
    settings reach the job runner, whose next job loads the newly chosen Whisper."""
    from daemon.database import JobStore, open_database
    from daemon.jobs import JobRunner

    home = NodeHome(tmp_path / "home")
    home.create()
    log_path = tmp_path / "node.log"
    configure_logging(log_format="keyvalue", level="info", log_file=log_path)
    running = Config().replace("node", log_file=str(log_path))
    with open_database(home.database_path) as database:
        runner = JobRunner(JobStore(database), home=home, config=running)
        before = runner._get_recognizer()
        assert before.store.choice.setting == "auto"  # type: ignore[attr-defined]
        fresh = running.replace("models", whisper="tiny.en").replace("listen", port=7777)
        fresh = fresh.replace("fl", alpha=0.5)
        assert reload_config(home, running, lambda: fresh, apply_jobs=runner.update_config)
        after = runner._get_recognizer()
        assert after is not before
        assert after.store.choice.setting == "tiny.en"  # type: ignore[attr-defined]
    text = log_path.read_text()
    assert "event=config.setting key=models.whisper applied=next_job" in text
    assert "event=config.setting key=listen.port applied=no needs=restart" in text
    assert "event=config.setting key=fl.alpha applied=no needs=restart" in text  # no apply_fl
    assert "key=node.log_level" not in text  # unchanged settings are not listed
    configure_logging(log_format="keyvalue", level="info")
