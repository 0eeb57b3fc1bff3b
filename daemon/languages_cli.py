"""``parley languages [--json]``: what this install can recognize, translate and speak.

Reads the home's config (``models.*``) when there is one, else the defaults, and prints the
language matrix of :mod:`media.languages`: per language the Whisper model that recognizes it,
per direction the translation engine (direct or a pivot through a third language), per language
the engine and voice that speak it. Nothing is loaded except a local Whisper folder named in
``models.whisper`` (only loading it tells whether it is multilingual).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from daemon.cli_options import HomeOption
from daemon.config import Config

__all__ = ["languages_command"]


def languages_command(
    *,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: HomeOption = None,
) -> None:
    """What this install can recognize, translate (engine per direction) and speak."""
    from daemon.cli_support import fail, resolve_home
    from daemon.config import load_config
    from daemon.language_setup import language_matrix_for
    from media.errors import MediaError
    from media.languages import CORE_LANGUAGES

    node_home = resolve_home(home)
    config = load_config(node_home.config_path) if node_home.config_path.exists() else Config()
    try:
        matrix = language_matrix_for(config)
    except MediaError as error:
        fail(str(error))
    if as_json:
        print(json.dumps(matrix.to_json(), indent=2, ensure_ascii=False))
        return
    models = sorted(set(matrix.recognize.values()))
    print(
        f"recognize ({len(matrix.recognize)} languages; models.whisper = "
        f"{config.models.whisper_dir or config.models.whisper}):"
    )
    for model in models:
        languages = sorted(lang for lang, name in matrix.recognize.items() if name == model)
        shown = (
            ", ".join(languages)
            if len(languages) <= 12
            else (
                ", ".join(lang for lang in languages if lang in CORE_LANGUAGES)
                + f" and {len(languages) - len([x for x in languages if x in CORE_LANGUAGES])} more"
            )
        )
        print(f"  {model}: {shown}")
    if matrix.recognize_missing:
        print(f"  (not available: {matrix.recognize_missing})")
    print("translate:")
    for (source, target), route in sorted(matrix.translate.items()):
        print(f"  {source}→{target}: {route.describe()}")
    missing = [
        f"{s}→{t}"
        for s in matrix.languages
        for t in matrix.languages
        if s != t and (s, t) not in matrix.translate
    ]
    if missing:
        print(f"  (no engine for {', '.join(missing)})")
    print(f"speak ({len(matrix.speak)} languages):")
    for language in matrix.languages:
        voice = matrix.speak.get(language)
        print(f"  {language}: {f'{voice.engine} ({voice.voice})' if voice else 'no voice'}")
    others = sorted(set(matrix.speak) - set(matrix.languages))
    for engine in sorted({matrix.speak[language].engine for language in others}):
        tags = [language for language in others if matrix.speak[language].engine == engine]
        print(f"  and with {engine}: {', '.join(tags)}")
