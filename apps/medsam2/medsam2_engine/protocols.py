"""Named inference protocols: how prompts become a 3D mask, as the weights were validated.

``medsam2`` reproduces MedSAM2's published 3D protocol (bowang-lab/MedSAM2,
``medsam2_infer_3D_CT.py``): whole slices at the model's input size (windowed, as uint8,
resized with PIL's bicubic, /255, ImageNet statistics); the prompts on their
slices; a forward pass; ``reset_state`` and the same prompts again; a reverse pass, so the
backward pass never sees forward-pass memories; the union of both passes; the largest 3D
connected component (26-connectivity, as ``skimage.measure.label``); sam2's small-hole
filling (``fill_hole_area=8``) on every device. MedSAM2 vendors sam2's older video
predictor (``sam2_video_predictor_legacy`` in sam2 1.1.0); the app's, built on the current
one, gives the same voxels and object scores (tests/test_equivalence.py). Each request rebuilds the passes from a
state that holds only the label's current prompts, so a result depends on the prompts
alone, never on the order they were given in.

How the app's extras combine with it (the reference has one box on one key slice):

- clicks and boxes on several slices are all given before any pass, each slice
  in one call (box and every point together); the forward pass starts at the first prompted
  slice, the backward pass at the last; slices both passes reach take the union, as the
  reference does at its key slice;
- a correction (any change of a label's prompts) re-runs both passes from a prompts-only
  state: with every prompted slice in the memory attention, any prompt can change any slice;
- several labels are independent runs, one state each; the largest component is per label.

``medsam2_point`` is MedSAM2's point/RECIST protocol (``medsam2_infer_CT_lesion_npz_recist.py``,
``examples/infer_CT_LUNA25.py``): each prompted slice's mask is made from its prompts alone,
then every pass starts from a fresh state given those masks back (``add_new_mask``); the
passes' union is kept whole, with no largest-component step (so no exact stop either).
Under ``medsam2`` a label prompted by clicks only, without any box, runs this protocol: it is
how MedSAM2 segments from points, and every client can send a click without a box.

``sam2`` is sam2's own video-predictor usage: one state per label, clicks refine a slice
with its previous mask, forward then backward pass in that same state, no component filter.

``medsam2_video`` is MedSAM2's video protocol (``medsam2_infer_video.py``, the
``medsam2_us_heart`` preset's): an 8-bit loop's frames as stored (/255: ``windowing.is_8bit_loop``),
resized as MedSAM2 resizes them (uint8, PIL bicubic),
one state per label as ``sam2``, the raw mask (logits above 0) with no component filter and no
hole filling (the preset builds the predictor without post-processing). The script prompts the
first frame with a mask and runs forward; a prompt on a later frame also runs backward in the
same state, as sam2 does, so the frames before it are segmented too.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

PROTOCOLS = ("medsam2", "medsam2_point", "sam2", "medsam2_video")
_TWENTY_SIX_CONNECTED = np.ones((3, 3, 3), dtype=bool)


class ProtocolError(ValueError):
    """An unknown protocol name."""


def check_protocol(name: str) -> str:
    if name not in PROTOCOLS:
        raise ProtocolError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {name!r}")
    return name


def default_protocol(preset) -> str:
    """The protocol a preset's weights were validated with: the preset's own where it names one
    (``medsam2_video`` for the echo fine-tune), sam2's for Meta's SAM 2 / 2.1 presets, MedSAM2's
    for MedSAM2 and for a model config of one's own (a medical fine-tune)."""
    if getattr(preset, "protocol", ""):
        return preset.protocol
    return "sam2" if getattr(preset, "name", "").startswith("sam2") else "medsam2"


def one_state(protocol: str) -> bool:
    """Does the protocol keep one state per label through both passes and corrections (sam2's way)?"""
    return protocol in ("sam2", "medsam2_video")


def input_resampling(protocol: str) -> str:
    """How slices become model inputs: MedSAM2's uint8 + PIL bicubic for ``medsam2``, float otherwise."""
    return "medsam2" if protocol.startswith("medsam2") else "float"


def label_protocol(protocol: str, frame_prompts) -> str:
    """The protocol one label runs: ``medsam2``'s point protocol when its prompts hold no box."""
    if protocol == "medsam2" and not any(p.box is not None for p in frame_prompts):
        return "medsam2_point"
    return protocol


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a 3D bool mask ``[i, j, k]``.

    Ties go to the component met first scanning ``[k, j, i]`` (slice, row, column), as the
    reference's ``skimage.measure.label`` on its ``[z, y, x]`` array and ``argmax`` do.
    """
    if not mask.any():
        return mask
    scan = mask.transpose(2, 1, 0) if mask.ndim == 3 else mask.T
    labels, _ = ndimage.label(scan, structure=_TWENTY_SIX_CONNECTED if mask.ndim == 3 else None)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    kept = labels == int(np.argmax(sizes))
    return kept.transpose(2, 1, 0) if mask.ndim == 3 else kept.T
