"""``POST /scoring/medsam2_uncertainty``: SAM 2's uncertainty per unlabelled study, stored per study.

Each study's image info gets ``medsam2_uncertainty`` (the score) with its parts and the
checkpoint stamp it was computed with; a study already scored with the served weights
is skipped, so after a fine-tune publishes new weights every study is scored again.
MONAI Label runs scoring at start-up, after training and after each next-sample request.
"""

from __future__ import annotations

import logging
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from medsam2_engine.volume_segmenter import VolumeSegmenter
from medsam2_engine.atomic_files import file_stamp
from medsam2_engine.training.cases import CaseFiles, LabelMismatch, load_case
from medsam2_engine.volume_io import ImageReadError, load_image

from ..options import flag, integer
from ..priority import yield_to_interactive
from .uncertainty import priors_from_labels, study_uncertainty

logger = logging.getLogger(__name__)

SCORE_KEY = "medsam2_uncertainty"
DETAIL_KEY = "medsam2_uncertainty_detail"


class UncertaintyScoring(ScoringMethod):
    def __init__(self, segmenter: VolumeSegmenter, max_studies: int = 0):
        super().__init__("SAM 2 uncertainty per unlabelled study: forward/backward disagreement, predicted IoU, "
                         "object score")
        self.segmenter = segmenter
        self.max_studies = max_studies

    def model_stamp(self) -> str:
        path = self.segmenter.models.resolve()
        return f"{path}:{file_stamp(path)}"

    def priors(self, datastore: Datastore) -> list:
        maps = []
        for item in datastore.datalist():
            try:
                maps.append(load_case(CaseFiles(item["image"], item["label"])).labels)
            except (LabelMismatch, ImageReadError) as err:
                logger.warning("uncertainty: label not used for box priors: %s", err)
        return priors_from_labels(maps)

    def __call__(self, request, datastore: Datastore):
        yield_to_interactive("scoring")
        started = time.monotonic()
        stamp = self.model_stamp()
        force = flag(request.get("force", False), "force")
        todo = [image_id for image_id in sorted(datastore.get_unlabeled_images())
                if force or datastore.get_image_info(image_id).get(DETAIL_KEY, {}).get("model") != stamp]
        limit = integer(request.get("max_studies", self.max_studies) or 0, "max_studies", low=0)
        todo = todo[:limit] if limit else todo
        if not todo:
            logger.info("uncertainty: every unlabelled study is scored with the served weights")
            return {"scored": 0}
        priors = self.priors(datastore)
        logger.info("uncertainty: scoring %d studies with %d box priors", len(todo), len(priors))
        scores = {}
        for n, image_id in enumerate(todo, 1):
            try:
                volume = load_image(datastore.get_image_uri(image_id))
                if volume.is_rgb:
                    logger.info("uncertainty: %s is a colour image; not scored", image_id)
                    continue
                result = study_uncertainty(self.segmenter, volume, priors, ("uncertainty", image_id))
            except (ImageReadError, ValueError) as err:
                logger.warning("uncertainty: %s not scored: %s", image_id, err)
                continue
            scores[image_id] = result["score"]
            datastore.update_image_info(image_id, {
                SCORE_KEY: result["score"],
                DETAIL_KEY: {"model": stamp, "ts": int(time.time()), "structures": result["structures"]},
            })
            logger.info("uncertainty %d/%d: %s = %.4f", n, len(todo), image_id, result["score"])
        logger.info("uncertainty: %d studies scored in %.1fs", len(scores), time.monotonic() - started)
        return {"scored": len(scores), "scores": scores}
