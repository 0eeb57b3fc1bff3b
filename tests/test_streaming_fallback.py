"""The temperature fallback runs only on the decodes whose words become final (issue 16): the
decodes that show partials stop at the first temperature, the speech-offset and utterance-end
decodes climb the ladder; a call's recognizer is built that way."""

from __future__ import annotations

import numpy as np

from daemon.call_models import CALL_STREAMING, CallModels
from media.asr import WHISPER_TEMPERATURES, DecodeOptions, Transcript
from media.features import SAMPLE_RATE, log_mel
from media.streaming_asr import StreamingTranscriber


class _OptionsRecordingStandIn:
    """Stands in for a FeatureTranscriber: records the temperatures each decode was given."""

    options = DecodeOptions(beam_size=1, best_of=1, temperatures=WHISPER_TEMPERATURES)

    def __init__(self) -> None:
        self.temperatures: list[tuple[float, ...]] = []

    def transcribe_features(self, mel: object, *, options: DecodeOptions) -> Transcript:
        self.temperatures.append(options.temperatures)
        return Transcript(language="en", duration_s=0.0)


def _syllables(seconds: float) -> np.ndarray:
    """A tone broken by a 0.1 s gap every 0.5 s: speech all along to the energy VAD."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    for start in np.arange(0.4, seconds, 0.5):
        audio[round(start * SAMPLE_RATE) : round((start + 0.1) * SAMPLE_RATE)] = 0.0
    return audio


def test_only_decodes_that_finalize_words_use_the_fallback_ladder_with_stand_in_transcriber() -> (
    None
):
    stand_in = _OptionsRecordingStandIn()
    streamer = StreamingTranscriber(stand_in, settings=CALL_STREAMING, clock=lambda: 0.0)  # type: ignore[arg-type]
    quiet = np.zeros(SAMPLE_RATE, np.float32)
    features = log_mel(np.concatenate([quiet, _syllables(7.0), quiet, quiet]))
    for start in range(0, features.shape[1], 10):
        streamer.push(features[:, start : start + 10])
    streamer.finish()
    # 7 s of speech: partial decodes every 2 s, then the speech-offset decode.
    assert stand_in.temperatures[:-1] == [(0.0,)] * (len(stand_in.temperatures) - 1)
    assert len(stand_in.temperatures) >= 3
    assert stand_in.temperatures[-1] == WHISPER_TEMPERATURES


def test_a_call_decodes_greedily_with_the_fallback_ladder() -> None:
    models = CallModels()
    assert models.streaming == CALL_STREAMING
    assert models._asr_options.temperatures == WHISPER_TEMPERATURES
    assert models._asr_options.beam_size == 1
