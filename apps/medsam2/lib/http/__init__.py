"""The server's HTTP side: MONAI Label's routes as this app holds them, and the app's own, one
module per resource. ``inventory.py`` lists every route the server exposes (role, rules, code)
and installs exactly those; ``errors.py`` turns the app's errors into answers (one mapping,
``lib/errors.py``); ``access.py`` says who is asking.

- ``studies.py``: the datastore's images; ``labels.py``: labels, their history, accepting a
  one-prompt result; ``inference.py``: ``/infer``; ``tasks.py``: fine-tune, scoring, batch,
  next study, reload, logs; ``sessions.py``: Slicer's uploaded volumes; ``ohif.py``: OHIF and
  its DICOMweb proxy;
- ``viewer.py`` and ``segment_stream.py``: the page and its streamed segmentation; ``loop.py``:
  the learning loop's state, pushed to every tab; ``one_prompt.py``: one-prompt runs.
"""
