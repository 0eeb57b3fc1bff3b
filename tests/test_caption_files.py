"""``parley caption FILES...``: several files and globs, tracks beside each input by default,
``--out DIR``, and no file replaced without ``--force`` (issue 19, "Captioning parity").

English recordings with ``--language en`` so that the small tiny.en transcribes them."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import srt

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import typer
    from typer.testing import CliRunner

    from daemon.caption_cli import caption_command
    from daemon.cli import UserError
from media.wer import wer
from tests.speech import synthesize_speech

pytestmark = pytest.mark.slow

SCRIPTS = {
    "memo": "Please send me the report before Friday.",
    "talk": "Thank you for coming to the meeting today.",
}

app = typer.Typer()
app.command("caption")(caption_command)


@app.command("noop")
def _noop() -> None:
    """A second command, so that ``caption`` is a subcommand as on the real app."""


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("recordings")
    return {stem: synthesize_speech(text, folder / f"{stem}.wav") for stem, text in SCRIPTS.items()}


def _invoke(*args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app, ["caption", *args])
    return result.exit_code, result.stdout, result.exception


def _text(path: Path) -> str:
    return " ".join(cue.content.replace("\n", " ") for cue in srt.parse(path.read_text()))


def test_a_glob_captions_every_file_beside_it(recordings: dict[str, Path], tmp_path: Path) -> None:
    folder = recordings["memo"].parent
    home = str(tmp_path / "home")
    code, stdout, error = _invoke(
        str(folder / "*.wav"), "--local", "--language", "en", "--home", home
    )
    assert code == 0, error
    expected = sorted(
        str(folder / f"{stem}.en.{ext}") for stem in SCRIPTS for ext in ("srt", "vtt")
    )
    assert sorted(stdout.split()) == expected
    for stem, script in SCRIPTS.items():
        assert wer(script, _text(folder / f"{stem}.en.srt")) <= 0.2

    # Again: every output exists, so nothing is replaced and each file is refused in one line.
    before = {path: Path(path).read_bytes() for path in expected}
    (folder / "memo.en.vtt").unlink()  # memo's srt still exists: memo is refused whole
    code, stdout, error = _invoke(
        str(recordings["memo"]), str(recordings["talk"]), "--local", "--language", "en",
        "--home", home,
    )  # fmt: skip
    assert code != 0 and isinstance(error, UserError), error
    assert stdout.split() == []
    assert not (folder / "memo.en.vtt").exists()
    assert all(Path(p).read_bytes() == data for p, data in before.items() if Path(p).exists())

    # --force replaces them.
    code, stdout, error = _invoke(
        str(recordings["memo"]), "--local", "--language", "en", "--home", home, "--force"
    )
    assert code == 0, error
    assert (folder / "memo.en.vtt").is_file()


def test_one_refused_file_is_one_line_naming_it(
    recordings: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    taken = out / "talk.en.srt"
    taken.write_text("mine")
    _code, _stdout, error = _invoke(
        str(recordings["talk"]), "--local", "--language", "en", "--out", str(out),
        "--home", str(tmp_path / "home"),
    )  # fmt: skip
    assert isinstance(error, UserError), error
    assert str(taken) in str(error) and "--force" in str(error) and "\n" not in str(error)
    assert taken.read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["talk.en.srt"]


def test_out_folder_and_a_glob_that_matches_nothing(
    recordings: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, stdout, error = _invoke(
        str(recordings["memo"]), "--local", "--language", "en", "--out", str(out),
        "--home", str(tmp_path / "home"),
    )  # fmt: skip
    assert code == 0, error
    assert sorted(stdout.split()) == [str(out / "memo.en.srt"), str(out / "memo.en.vtt")]
    code, _stdout, error = _invoke(str(tmp_path / "*.mp3"), "--home", str(tmp_path / "home"))
    assert isinstance(error, UserError) and "*.mp3" in str(error), error
    assert "\n" not in str(error)
