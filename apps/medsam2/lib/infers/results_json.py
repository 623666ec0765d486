"""The engine's result dataclasses as the JSON the tasks answer with (the only place it is built)."""

from __future__ import annotations

from medsam2_engine.results import RunInfo, SliceScore

RANDOM_WEIGHTS_WARNING = "UNTRAINED RANDOM WEIGHTS: this mask proves the plumbing only, not accuracy"
UNTRAINED_ORIGIN_WARNING = ("UNTRAINED ORIGIN: these weights were fine-tuned from random weights on this datastore "
                            "only; the mask is not from a trained MedSAM-2")
RGB_WINDOW = {"source": "RGB 0-255"}


def window_json(window) -> dict:
    """A ``windowing.Window`` (None: an RGB image, taken as it is)."""
    return dict(RGB_WINDOW) if window is None else window.to_json()


def run_json(run: RunInfo, window, modality: str) -> dict:
    """What every result says: the weights (and a loud warning when untrained), window, stages."""
    out = {
        "model": {"checkpoint": run.checkpoint, "random_weights": run.random_weights, "version": run.model_version},
        "window": window_json(window),
        "modality": modality,
        "stages": dict(run.timings),
    }
    if run.runtimes:
        out["runtimes"] = {stage: list(names) for stage, names in run.runtimes.items()}
    if run.random_weights:
        out["warning"] = RANDOM_WEIGHTS_WARNING
        if run.untrained_origin:
            out["model"]["untrained_origin"] = True
            out["warning"] = UNTRAINED_ORIGIN_WARNING
    return out


def slices_json(slices: dict) -> list:
    """Per-slice scores, ``[{"slice": k, "object_score", "predicted_iou", "area"[, "confidence"]}]``."""
    return [{"slice": k, **slice_json(score)} for k, score in slices.items()]


def slice_json(score: SliceScore) -> dict:
    out = {"object_score": score.object_score, "predicted_iou": score.predicted_iou, "area": score.area}
    if score.confidence is not None:
        out["confidence"] = score.confidence
    return out


def pass_json(report) -> dict:
    return {"direction": report.direction, "start": report.start, "last": report.last, "slices": report.slices,
            "stopped_early": report.stopped_early, "converged": report.converged,
            "ended_detached": report.ended_detached}


def exact_stop_json(stopped) -> dict | None:
    if stopped is None:
        return None
    return {"slices_segmented": [stopped.first, stopped.last], "num_slices": stopped.num_slices,
            "note": stopped.note()}


def crop_region_json(report) -> dict | None:
    if report is None:
        return None
    if report.region is None:  # grown to whole slices
        return {"rows": None, "cols": None, "input_size": None, "whole_slices": True, "grows": report.grows}
    return {**report.region.to_json(), "grows": report.grows}


def support_json(choice) -> dict:
    similarity = None if choice.similarity is None else round(choice.similarity, 4)
    return {"name": choice.name, "similarity": similarity, "used": choice.used, "reason": choice.reason,
            "slices": list(choice.slices)}


def query_json(query) -> dict:
    """One 2D one-prompt query's scores."""
    return {
        "object_score": round(query.object_score, 4),
        "predicted_iou": None if query.predicted_iou is None else round(query.predicted_iou, 4),
        "confidence": round(query.confidence, 4),
        "found": query.found,
        "area": int(query.mask.sum()),
    }


def volume_result_json(result, label_names: dict) -> dict:
    """A 3D result (``engine.VolumeResult``)."""
    session = result.session
    out = run_json(result.run, result.window, result.modality)
    out.update({
        "label_names": label_names,
        "session": {"key": list(session.key), "started": session.started, "labels": list(session.labels),
                    "slices_encoded": session.slices_encoded, "feature_cache_slices": session.feature_cache_slices,
                    "feature_cache_mb": session.feature_cache_mb},
        "protocol": result.run.protocol,
        "protocol_options": {"early_stop": result.options.early_stop.enabled,
                             "exact_stop": result.options.early_stop.exact_stop
                             and result.run.protocol == "medsam2",
                             "correction_stop": result.options.correction_stop.enabled,
                             "crop_region": result.options.crop_region.enabled},
        "engine_warnings": list(result.warnings),  # e.g. a label's track dropped after a failure
        "labels": {
            name: {
                "prompted_slices": r.prompted_slices,
                "protocol": r.protocol,
                "passes": [pass_json(p) for p in r.passes],
                "reused_previous_result": r.reused,
                "restarted": r.restarted,
                "exact_stop": exact_stop_json(r.exact_stop),
                "crop_region": crop_region_json(r.crop_region),
                "voxels": int(r.mask.sum()),
                "locked_out": r.locked_out,  # voxels SAM 2 gave it that locked structures keep
                "slices": slices_json(r.slices),
            }
            for name, r in result.labels.items()
        },
    })
    return out
