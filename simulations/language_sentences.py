"""The parallel sentence sets of ``simulations/language_data/`` (en, pt, es; issue 13).

``evaluation.tsv`` is what ``parley bench languages`` reports on; ``route_choice.tsv`` is what
the translation routes were chosen on (``media.translate.PREFERRED_ROUTES``). The two are kept
apart so that the reported figures are not measured on the material the choice was made with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["DATA_DIR", "EVALUATION", "ROUTE_CHOICE", "SentenceSet", "load_sentences"]

DATA_DIR: Final = Path(__file__).parent / "language_data"
EVALUATION: Final = "evaluation"
ROUTE_CHOICE: Final = "route_choice"


@dataclass(frozen=True, slots=True)
class SentenceSet:
    """Parallel sentences: ``by_language[lang][i]`` are translations of each other."""

    name: str
    by_language: dict[str, tuple[str, ...]]

    def __len__(self) -> int:
        return len(next(iter(self.by_language.values())))


def load_sentences(name: str = EVALUATION) -> SentenceSet:
    """Read ``language_data/<name>.tsv`` (``#`` comments, a header row of language codes)."""
    path = DATA_DIR / f"{name}.tsv"
    rows = [
        line.split("\t")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    header, body = rows[0], rows[1:]
    for number, row in enumerate(body, start=2):
        if len(row) != len(header) or not all(cell.strip() for cell in row):
            raise ValueError(f"{path}: row {number} does not have {len(header)} filled columns")
    return SentenceSet(
        name=name,
        by_language={
            lang: tuple(row[column].strip() for row in body) for column, lang in enumerate(header)
        },
    )
