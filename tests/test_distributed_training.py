"""Multi-process fine-tuning (DDP): device choice, sharding, and ranks kept in lock-step.

The lock-step test runs two CPU processes over ``gloo``: the same code path as several
GPUs over ``nccl``, minus the devices.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import make_volume

pytest.importorskip("training.model.sam2", reason="sam2's training package (needs tensordict) is not installed")

from medsam2_engine.training.distributed import Ranks, training_devices  # noqa: E402
from medsam2_engine.training.finetune import FineTuner  # noqa: E402


def test_multi_gpu_picks_the_named_gpus_and_refuses_missing_ones(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert training_devices("auto", multi_gpu=True, gpus="all") == ["cuda:0", "cuda:1"]
    assert training_devices("auto", multi_gpu=True, gpus="1") == ["cuda:1"]
    assert training_devices("cuda", multi_gpu=False) == ["cuda"]
    with pytest.raises(ValueError, match=r"gpus '0,3': no such GPU \[3\].*has 2"):
        training_devices("auto", multi_gpu=True, gpus="0,3")
    with pytest.raises(ValueError, match="comma-separated GPU indices"):
        training_devices("auto", multi_gpu=True, gpus="first")


def test_multi_gpu_without_cuda_trains_in_one_cpu_process(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_devices("cpu", multi_gpu=True) == ["cpu"]
    assert "no CUDA device" in caplog.text


def test_each_rank_takes_an_equal_disjoint_share():
    clips = list(range(7))
    shares = [Ranks(rank, 2).shard(clips) for rank in range(2)]
    assert shares == [[0, 2, 4], [1, 3, 5]]  # equal lengths, or one rank would wait forever
    assert Ranks().shard(clips) == clips


class RecordingFineTuner(FineTuner):
    """Saves each rank's weights after every epoch, so the test can compare the ranks."""

    record_dir: str = ""

    def _train_epoch(self, ranks, model, optimizer, loss_fn, sampler, epoch, started, scheduler=None):
        result = super()._train_epoch(ranks, model, optimizer, loss_fn, sampler, epoch, started, scheduler)
        weights = getattr(model, "module", model).state_dict()
        torch.save({"weights": weights, "steps": result[0], "ddp": hasattr(model, "module")},
                   f"{self.record_dir}/rank{ranks.rank}_epoch{epoch}.pt")
        return result


def test_two_processes_train_in_lock_step_and_rank_zero_publishes(tmp_path):
    from medsam2_engine.checkpoints import read_state_dict
    from medsam2_engine.training.cases import Case, CaseFiles
    from medsam2_engine.training.finetune import FineTuneConfig
    from medsam2_engine.windowing import choose_window
    from tests.support.small_model import small_preset

    cases = []
    for seed in range(2):
        volume = make_volume(shape=(40, 32, 10), seed=seed)
        labels = (volume.array > 120).astype(np.uint8)
        cases.append(Case(CaseFiles("", "", f"phantom{seed}"), volume, labels, choose_window(volume.array, "CT"), [1]))
    config = FineTuneConfig(epochs=2, steps_per_epoch=2, clip_length=3, max_objects=1, lr=1e-3,
                            baseline_validation=False, devices=["cpu", "cpu"], log_every=1)
    config.prompts.correction_clicks = 1
    tuner = RecordingFineTuner(small_preset(), config)
    tuner.record_dir = str(tmp_path)
    output = tmp_path / "finetuned.pt"

    summary = tuner.run(cases, [], "random", str(output))

    assert summary["devices"] == ["cpu", "cpu"] and summary["status"] == "DONE"
    assert [e["steps"] for e in summary["history"]] == [2, 2]
    for epoch in (1, 2):
        rank0, rank1 = (torch.load(tmp_path / f"rank{r}_epoch{epoch}.pt") for r in (0, 1))
        assert rank0["ddp"] and rank1["ddp"] and rank0["steps"] == rank1["steps"] == 2
        differing = [k for k in rank0["weights"] if not torch.equal(rank0["weights"][k], rank1["weights"][k])]
        assert not differing, f"ranks diverged in epoch {epoch}: {differing[:5]}"
    first, second = (torch.load(tmp_path / f"rank0_epoch{e}.pt")["weights"] for e in (1, 2))
    assert any(not torch.equal(first[k], second[k]) for k in first), "the second epoch changed nothing"
    published = read_state_dict(str(output))
    best = {1: first, 2: second}[summary["best_metric_epoch"]]
    assert all(torch.equal(published[k], best[k]) for k in best)
