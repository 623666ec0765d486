"""sam2's small-hole filling on every device: its connected-components contract on the CPU.

sam2 fills background holes of at most ``fill_hole_area`` pixels in each low-resolution
mask (``fill_holes_in_mask_scores``), labelling components with ``sam2._C``, a CUDA
extension. A CPU install has no ``_C``: sam2 then warns and fills nothing, so the same
weights give other masks than on the GPU (MedSAM2's protocol runs with
``fill_hole_area=8``). Here the same contract — ``(labels, counts)`` of 8-connected
components of ``(N, 1, H, W)`` masks — is provided with ``scipy.ndimage.label``, so sam2's
own filling code runs unchanged everywhere.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_install_lock = threading.Lock()


def connected_components(mask: torch.Tensor) -> tuple:
    """``(labels, counts)`` as sam2's ``get_connected_components``: 8-connectivity, int32, same device.

    ``labels`` is 0 on background and a component id on foreground; ``counts`` holds each
    foreground pixel's component area (0 on background).
    """
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"expected masks of shape (N, 1, H, W), got {tuple(mask.shape)}")
    binary = (mask != 0).cpu().numpy()
    labels = np.zeros(binary.shape, dtype=np.int32)
    counts = np.zeros(binary.shape, dtype=np.int32)
    for n in range(binary.shape[0]):
        lab, _ = ndimage.label(binary[n, 0], structure=_EIGHT_CONNECTED)
        areas = np.bincount(lab.ravel())
        areas[0] = 0
        labels[n, 0] = lab
        counts[n, 0] = areas[lab]
    return torch.from_numpy(labels).to(mask.device), torch.from_numpy(counts).to(mask.device)


def has_compiled_extension() -> bool:
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def install() -> None:
    """Route sam2's component labelling: its CUDA kernel for CUDA tensors where built, else the CPU one."""
    from sam2.utils import misc

    with _install_lock:
        if getattr(misc.get_connected_components, "cpu_connected_components", False):
            return
        compiled = misc.get_connected_components if has_compiled_extension() else None

        def get_connected_components(mask):
            if compiled is not None and mask.is_cuda:
                return compiled(mask)
            return connected_components(mask)

        get_connected_components.cpu_connected_components = True
        misc.get_connected_components = get_connected_components
