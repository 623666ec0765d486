"""``python -m medsam2_eval``: the accuracy evaluation command (see :mod:`.cli`)."""

from .cli import main

raise SystemExit(main())
