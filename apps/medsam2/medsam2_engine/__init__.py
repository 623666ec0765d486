"""MedSAM-2 engine: SAM 2 over volumes and 2D images, with no MONAI Label dependency.

A 3D request, from the app's task down to sam2 and back:

- :mod:`.engine`: ``VolumeSegmenter.open(key, image)`` gives the request its
  :class:`.sessions.Session` (the image read once, windowed by :mod:`.windowing` into
  :mod:`.frames`); ``segment(session, prompts, options)`` runs each label's track and
  returns a ``VolumeResult`` of dataclasses (:mod:`.results`: ``RunInfo`` and per-slice
  scores). ``run`` does both in one call.
- :mod:`.tracks`: a label's ``LabelTrack``: its sam2 state, the prompts it holds, and its
  steps (apply the request's prompt changes, propagate, grow its crop region, paste the
  masks into the volume).
- :mod:`.propagation`: the forward and backward passes over sam2's video predictor, early
  stop and correction stop; :mod:`.protocols`: the ``medsam2`` and ``sam2`` protocols;
  :mod:`.crop_region`: the region of the slices a label is segmented in.
- :mod:`.predictor`: sam2's ``SAM2VideoPredictor`` with in-memory frames, a feature cache
  and the network's per-step lock; :mod:`.model_source`, :mod:`.checkpoints`,
  :mod:`.precision`: which weights, how loaded, at what precision.

Beside it: :mod:`.image2d` (2D, sam2's image predictor, the same open/segment shape),
:mod:`.one_prompt` (a study segmented from labelled ones in sam2's memory), :mod:`.training`
(fine-tuning), :mod:`.mask_measures` (Dice, the box on the largest slice), :mod:`.volume_io`.
The evaluation harness is its own package, ``medsam2_eval``; the MONAI Label tasks are the
app's ``lib`` (they build every JSON answer).
"""
