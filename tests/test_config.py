from __future__ import annotations

import os
import tomllib

import pytest

from daemon.config import (
    Config,
    ConfigError,
    FlSection,
    InvalidSetting,
    load_config,
    render_default_config,
)

KEY_HEX = "ab" * 32


def write(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_rendered_default_parses_back_to_the_defaults(tmp_path):
    text = render_default_config()
    # Independent parser check: every section and key is present and it is valid TOML.
    document = tomllib.loads(text)
    assert set(document) == {
        "node",
        "listen",
        "discovery",
        "trust",
        "session",
        "fl",
        "call",
        "storage",
        "models",
        "web",
    }
    assert load_config(write(tmp_path, text)) == Config()
    # Every setting has a comment line just above it.
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[index - 1].startswith("# "), line


def test_missing_file_means_defaults(tmp_path):
    assert load_config(tmp_path / "absent.toml") == Config()


def test_values_are_loaded(tmp_path):
    config = load_config(
        write(
            tmp_path,
            '[listen]\nport = 9000\nhost = "127.0.0.1"\n'
            f'[discovery]\nstatic_peers = ["10.1.2.3:7405:{KEY_HEX}"]\ninterfaces = ["127.0.0.1"]\n'
            "[fl]\nalpha = 1\n",
        )
    )
    assert config.listen.port == 9000
    assert config.discovery.static_peers == (f"10.1.2.3:7405:{KEY_HEX}",)
    assert config.fl.alpha == 1.0 and isinstance(config.fl.alpha, float)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[listen]\nport = 70000\n", "listen.port: must be 1..65535, got 70000"),
        ('[listen]\nport = "80"\n', "listen.port: must be an integer, got '80'"),
        ("[listen]\nport = 8.5\n", "listen.port: must be an integer, got 8.5"),
        ("[listen]\nport = true\n", "listen.port: must be an integer, got True"),
        ("[discovery]\nmdns = 1\n", "discovery.mdns: must be true or false, got 1"),
        ("[fl]\nalpha = 1.5\n", "fl.alpha: must be 0..1, got 1.5"),
        ("[fl]\nalpha = nan\n", "fl.alpha: must be a finite number, got nan"),
        (
            '[fl]\nrobust = "mean"\n',
            "fl.robust: must be one of 'trimmed_mean', 'median', 'none', got 'mean'",
        ),
        ("[listen]\nprot = 1\n", "listen.prot: unknown key (known: host, port)"),
        (
            "[lisen]\nport = 1\n",
            "lisen: unknown section (known: node, listen, discovery, trust, session, fl, call, storage, models, web)",
        ),
        ("listen = 3\n", "listen: must be a table ([listen]), got 3"),
        (
            '[discovery]\nstatic_peers = "a:1:k"\n',
            "discovery.static_peers: must be a list of strings, got 'a:1:k'",
        ),
        (
            '[discovery]\nstatic_peers = ["nohost"]\n',
            "discovery.static_peers: static peer 'nohost': expected host:port:key",
        ),
    ],
)
def test_each_kind_of_bad_value_names_file_key_and_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: {message}"
    assert "\n" not in str(caught.value)


def test_invalid_toml(tmp_path):
    path = write(tmp_path, "[listen\nport = 1\n")
    with pytest.raises(ConfigError, match=r"config\.toml: invalid TOML: .*line 1"):
        load_config(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file regardless of mode")
def test_unreadable_file_without_root(tmp_path):
    path = write(tmp_path, "")
    os.chmod(path, 0)
    with pytest.raises(ConfigError, match="cannot read: Permission denied"):
        load_config(path)


def test_unreadable_file(tmp_path):
    # A directory where the file should be is unreadable for root too.
    path = tmp_path / "config.toml"
    path.mkdir()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: cannot read: Is a directory"


def test_not_utf8(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xff\xfe[listen]")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(path)


def test_config_objects_are_frozen_and_validated_on_replace():
    config = Config()
    with pytest.raises(AttributeError):
        config.listen.port = 1  # type: ignore[misc]
    assert config.replace("listen", port=9).listen.port == 9
    with pytest.raises(InvalidSetting, match="listen.port: must be 1..65535, got 0"):
        config.replace("listen", port=0)
    with pytest.raises(InvalidSetting, match="fl.alpha: must be 0..1, got 2.0"):
        FlSection(alpha=2)


def test_static_peer_with_a_bad_key_is_refused(tmp_path):
    path = write(tmp_path, '[discovery]\nstatic_peers = ["10.1.2.3:7405:abc"]\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: discovery.static_peers: static peer '10.1.2.3:7405:abc': not a peer key: "
        "'abc' (expected 52 base32 characters or 64 hex digits)"
    )


def test_node_name_must_be_a_plain_ascii_name(tmp_path):
    path = write(tmp_path, '[node]\nname = "\u0430lice"\n')  # Cyrillic a: a look-alike
    with pytest.raises(ConfigError, match=r"node\.name: invalid peer name"):
        load_config(path)
    assert (
        load_config(write(tmp_path, '[node]\nname = "alice-laptop"\n')).node.name == "alice-laptop"
    )


def test_web_page_stays_on_loopback_unless_allowed(tmp_path):
    assert Config().web.host == "127.0.0.1" and Config().web.port == 7406
    with pytest.raises(ConfigError, match=r"web\.host: '0\.0\.0\.0' is reachable from the network"):
        load_config(write(tmp_path, '[web]\nhost = "0.0.0.0"\n'))
    with pytest.raises(ConfigError, match=r"web\.host: must be an IP address"):
        load_config(write(tmp_path, '[web]\nhost = "example.org"\n'))
    allowed = load_config(write(tmp_path, '[web]\nhost = "0.0.0.0"\nallow_remote = true\n'))
    assert allowed.web.host == "0.0.0.0"
    assert load_config(write(tmp_path, '[web]\nhost = "::1"\n')).web.host == "::1"


# --- meaning as well as type (issue 19, rough edge 4) ------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[call]\nlanguage = "klingon"\n',
            "call.language: must be a language tag Whisper knows (e.g. 'en', 'pt-BR'), "
            "got 'klingon'",
        ),
        (
            '[call]\nlanguage = "xx"\n',
            "call.language: must be a language tag Whisper knows (e.g. 'en', 'pt-BR'), got 'xx'",
        ),
        (
            '[listen]\nhost = "not an ip"\n',
            "listen.host: must be an IP address (e.g. '0.0.0.0', '127.0.0.1' or '::'), "
            "got 'not an ip'",
        ),
        (
            '[models]\nwhisper_dir = "/nonexistent/whisper"\n',
            "models.whisper_dir: no such folder: '/nonexistent/whisper'",
        ),
        (
            '[models]\ntranslation_dir = "/nonexistent/marian"\n',
            "models.translation_dir: no such folder: '/nonexistent/marian'",
        ),
    ],
)
def test_settings_are_checked_for_meaning_not_only_type(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: {message}"


def test_meaningful_values_are_accepted(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    config = load_config(
        write(
            tmp_path,
            '[call]\nlanguage = "pt-BR"\n[listen]\nhost = "::1"\n'
            f'[models]\nwhisper_dir = "{folder}"\n',
        )
    )
    assert (config.call.language, config.listen.host) == ("pt-BR", "::1")
    assert config.models.whisper_dir == str(folder)


def test_flags_are_checked_like_the_file_and_named_by_flag(tmp_path):
    from daemon.config import Override, Source, load_sourced_config

    sourced = load_sourced_config(write(tmp_path, "[listen]\nport = 9000\n"))
    assert sourced.sources["listen.port"] is Source.FILE
    assert sourced.sources["listen.host"] is Source.DEFAULT
    flagged = sourced.with_overrides([Override(key="listen.port", value=7999, flag="--port")])
    assert flagged.config.listen.port == 7999
    assert flagged.sources["listen.port"] is Source.FLAG
    for bad in (70000, -1, 0):
        with pytest.raises(ConfigError, match=rf"^--port: must be 1..65535, got {bad}$"):
            sourced.with_overrides([Override(key="listen.port", value=bad, flag="--port")])


def test_settings_with_sources_render_as_toml_that_parses_back(tmp_path):
    from daemon.config import (
        Override,
        config_from_mapping,
        load_sourced_config,
        render_sourced_config,
    )

    sourced = load_sourced_config(write(tmp_path, '[node]\nname = "desk"\n')).with_overrides(
        [Override(key="listen.port", value=7999, flag="--port")]
    )
    text = render_sourced_config(sourced)
    # An independent parser reads back exactly the settings in effect.
    assert config_from_mapping(tomllib.loads(text)) == sourced.config
    assert 'name = "desk"  # file' in text
    assert "port = 7999  # flag --port" in text
    assert 'host = "0.0.0.0"  # default' in text
