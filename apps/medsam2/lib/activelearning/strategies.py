"""Next-study strategies: MONAI Label's ``random`` and ``first``, and SAM 2 ``uncertainty``."""

from __future__ import annotations

import logging
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from .scoring import SCORE_KEY

logger = logging.getLogger(__name__)

__all__ = ["First", "Random", "Uncertainty"]


class Uncertainty(Strategy):
    """The unlabelled study SAM 2 is least sure about (scores from ``UncertaintyScoring``).

    A study handed out in the last ``recent_s`` seconds goes behind the others, so two
    annotators asking at once get different studies. Unscored studies come last.
    """

    def __init__(self, recent_s: int = 600):
        super().__init__("Unlabelled study with the highest SAM 2 uncertainty")
        self.recent_s = recent_s

    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        now, strategy = int(time.time()), request.get("strategy", "uncertainty")

        def rank(image_id):
            info = datastore.get_image_info(image_id)
            served = info.get("strategy", {}).get(strategy, {}).get("ts", 0)
            score = info.get(SCORE_KEY)
            return (now - served < self.recent_s, score is None, -(score or 0.0), image_id)

        ranked = sorted(images, key=rank)
        chosen = ranked[0]
        score = datastore.get_image_info(chosen).get(SCORE_KEY)
        logger.info("uncertainty: next study %s (score %s); ranking %s", chosen, score, ranked[:5])
        return {"id": chosen, SCORE_KEY: score}
