"""The app's MONAI Label tasks over the engine (``medsam2_engine``).

Each task reads its request with :mod:`.request` (strict options from ``lib.options``),
opens the engine's session, segments, writes the label map with MONAI Label's writer
(:mod:`.base`) and answers with the JSON of :mod:`.results_json`, the only place results
become JSON. :mod:`.interactive_3d`, :mod:`.interactive_2d`: clicks and boxes;
:mod:`.one_prompt` with :mod:`.support_studies`: a study from labelled studies, no clicks.
"""
