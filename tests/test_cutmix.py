"""CutMix of the training stream: the box, the partner, the response mix by the box's area, and
the same draws in every worker and epoch replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurotwin import config as cfg
from neurotwin.data import loaders
from neurotwin.data.cutmix import CutMix, box


def constant_batch(b=6, n=3, t=4, h=9, w=16):
    """Trial i: every pixel i + 1, responses i + 1 (so a mixed pixel names its source)."""
    value = torch.arange(1, b + 1, dtype=torch.float32)
    return {
        "video": value.view(b, 1, 1, 1, 1).expand(b, 1, t, h, w).clone(),
        "response": value.view(b, 1, 1).expand(b, n, t).clone(),
        "behavior": torch.randn(b, 2, t),
        "pupil_center": torch.randn(b, 2, t),
        "trial_id": list(range(b)),
    }


def test_every_mixed_trial_gets_a_box_of_another_and_responses_by_area():
    batch = constant_batch()
    out = CutMix(prob=1.0, alpha=1.0, seed=3)(batch, "mouse", epoch=2, indices=[5, 1, 7, 0, 2, 3])
    assert torch.equal(out["behavior"], batch["behavior"])  # behaviour stays the trial's own
    h, w = batch["video"].shape[-2:]
    mixed = 0
    for i in range(6):
        frame = out["video"][i, 0]
        assert torch.equal(frame, frame[:1].expand_as(frame))  # the same box in every frame
        values = frame[0].unique().tolist()
        others = [v for v in values if v != i + 1]
        assert len(others) <= 1  # one partner, another trial of the batch
        share = (frame[0] != i + 1).float().mean().item()
        if others:
            mixed += 1
            j = int(others[0]) - 1
            assert j != i and 0 < share < 1
            mask = frame[0] != i + 1  # the pasted region is a box
            rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
            assert mask.sum() == len(rows) * len(cols)
            assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)  # fmt: skip
            expected = (1 - share) * (i + 1) + share * (j + 1)
        else:  # a box of zero area (clipped at a border or lam ~ 0)
            expected = i + 1
        assert torch.allclose(out["response"][i], torch.full((3, 4), float(expected)))
    assert mixed >= 4
    # the same key draws the same; another epoch draws anew; the input batch is untouched
    again = CutMix(prob=1.0, alpha=1.0, seed=3)(batch, "mouse", 2, [5, 1, 7, 0, 2, 3])
    assert torch.equal(again["video"], out["video"])
    other = CutMix(prob=1.0, alpha=1.0, seed=3)(batch, "mouse", 3, [5, 1, 7, 0, 2, 3])
    assert not torch.equal(other["video"], out["video"])
    assert torch.equal(batch["video"], constant_batch()["video"])


def test_box_area_follows_lam_and_stays_in_the_frame():
    rng = np.random.default_rng(0)
    for lam in (0.0, 0.25, 1.0):
        y0, y1, x0, x1 = box(rng, 36, 64, lam)
        assert 0 <= y0 <= y1 <= 36 and 0 <= x0 <= x1 <= 64
        assert (y1 - y0) <= int(36 * np.sqrt(lam)) and (x1 - x0) <= int(64 * np.sqrt(lam))
    # centred boxes (away from the borders) have the size sqrt(lam) x the frame's, rounded down
    areas = [
        (y1 - y0) * (x1 - x0) / (36 * 64)
        for y0, y1, x0, x1 in (box(rng, 36, 64, 0.25) for _ in range(400))
    ]
    assert max(areas) == pytest.approx(0.25, abs=0.02)


def test_off_and_single_trial_batches_are_left_alone():
    batch = constant_batch(b=1)
    assert CutMix(1.0)(batch, "m", 0, [0]) is batch
    batch = constant_batch()
    assert CutMix(0.0)(batch, "m", 0, list(range(6))) is batch
    with pytest.raises(ValueError):
        CutMix(1.5)


def test_training_stream_mixes_within_batches_the_same_way_every_time(synthetic_mice):
    data = cfg.DataConfig(data_dir=str(synthetic_mice), crop_frame=8, batch_size=4, num_workers=0)
    data.cutmix_prob = 1.0
    mix = loaders.training_mix(data, seed=5)
    assert isinstance(mix, CutMix) and loaders.training_mix(cfg.DataConfig(), 5) is None
    built = loaders.build_loaders(data, {"train": "train"}, seed=5)["train"]
    stream = loaders.TrainStream(built, num_workers=0, seed=5, mix=mix)
    plain = loaders.TrainStream(built, num_workers=0, seed=5)
    first = list(stream.epoch(1))
    assert [s for s, _ in first] == [s for s, _ in plain.epoch(1)]
    changed = 0
    for (_, mixed), (_, clean) in zip(first, plain.epoch(1)):
        assert torch.equal(mixed["behavior"], clean["behavior"])
        changed += int(not torch.equal(mixed["video"], clean["video"]))
        for i in range(mixed["video"].shape[0]):  # each pixel is from a trial of the batch
            own = mixed["video"][i] == clean["video"][i]
            others = (mixed["video"][i][None] == clean["video"]).any(0)
            assert (own | others).all()
    assert changed > 0
    for (_, a), (_, b) in zip(first, stream.epoch(1)):  # an epoch replays exactly (resume)
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["response"], b["response"])


def test_cutmix_options_are_checked():
    with pytest.raises(cfg.ConfigError, match="--cutmix_prob"):
        cfg.DataConfig(cutmix_prob=2.0)
    with pytest.raises(cfg.ConfigError, match="--cutmix_alpha"):
        cfg.DataConfig(cutmix_alpha=0.0)
