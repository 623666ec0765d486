"""Accuracy evaluation: reference-labelled images, a simulated user, MONAI metrics, a report.

A package beside the engine, not inside it: it drives :mod:`medsam2_engine` like any client,
and its built-in SAM 2 baseline imports MONAI Label, which the engine never does.

Modules, one concept each:

- :mod:`.cases`      finding images and their reference labels in a folder;
- :mod:`.clicks`     where the simulated user puts boxes and clicks;
- :mod:`.metrics`    Dice and normalised surface distance from ``monai.metrics``;
- :mod:`.baselines`  non-learned baselines (copy a slice, Otsu inside the box);
- :mod:`.methods`    this engine behind one small interface;
- :mod:`.builtin_sam2` MONAI Label's own ``Sam2InferTask`` behind the same interface;
- :mod:`.protocol`   the three protocols run against any method;
- :mod:`.report`     JSON, Dice-against-clicks curve and overlays;
- :mod:`.cli`        the command line.

The command line is ``python -m medsam2_eval``.
"""
