"""SessionDataset: items, crops, whole trials, transforms and their inverse."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from native_fixture import write_native_session
from neurotwin.data.dataset import InputTransform, OutputTransform, SessionDataset
from neurotwin.data.native import NativeSession
from neurotwin.errors import DataFormatError


@pytest.fixture
def session(native_session) -> NativeSession:
    return NativeSession(native_session)


def test_eval_items_are_whole_trials(session):
    ds = SessionDataset(session, "oracle")
    assert len(ds) == 2 and not ds.random_crop
    for i, trial in enumerate(ds.trial_ids):
        item = ds[i]
        raw = session.load_trial(trial)
        t = session.trial_length(trial)
        assert item["trial_id"] == trial and item["session"] == session.name
        assert item["video"].shape == (1, t, 6, 8) and item["video"].dtype == torch.float32
        assert item["response"].shape == (7, t) and item["response"].dtype == torch.float32
        assert item["behavior"].shape == (2, t) and item["pupil_center"].shape == (2, t)
        # (H, W, T) -> (1, T, H, W), padding removed, values unchanged without transforms
        np.testing.assert_array_equal(
            item["video"][0].numpy(), np.moveaxis(raw["videos"][..., :t], -1, 0)
        )
        np.testing.assert_array_equal(item["response"].numpy(), raw["responses"][:, :t])
        np.testing.assert_array_equal(item["behavior"].numpy(), raw["behavior"][:, :t])
        assert not torch.isnan(item["video"]).any()


def test_training_crops_within_valid_frames(session):
    ds = SessionDataset(session, "train", crop_frame=10, seed=3)
    assert ds.random_crop and ds.crop_frame == 10
    starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i, trial in enumerate(ds.trial_ids):
            frames = ds.frames(i)
            assert 0 <= frames.start and frames.stop <= session.trial_length(trial)
            starts.add(frames.start)
            item = ds[i]
            raw = session.load_trial(trial)
            assert item["video"].shape == (1, 10, 6, 8) and item["response"].shape == (7, 10)
            np.testing.assert_array_equal(item["response"].numpy(), raw["responses"][:, frames])
            assert not torch.isnan(item["video"]).any()
    assert len(starts) > 3  # crops move


def test_crops_deterministic_under_seed_and_epoch(session):
    a = SessionDataset(session, "train", crop_frame=8, seed=1)
    b = SessionDataset(session, "train", crop_frame=8, seed=1)
    c = SessionDataset(session, "train", crop_frame=8, seed=2)
    same = [a.frames(i) == b.frames(i) for i in range(len(a))]
    assert all(same)
    assert [a.frames(i) for i in range(len(a))] != [c.frames(i) for i in range(len(c))]
    before = [a.frames(i) for i in range(len(a))]
    a.set_epoch(1)
    assert [a.frames(i) for i in range(len(a))] != before
    torch.testing.assert_close(
        b[0]["video"], SessionDataset(session, "train", 8, seed=1)[0]["video"]
    )


def test_crop_shortened_to_shortest_trial(tmp_path, caplog):
    lengths = [24, 12, 24, 24, 20, 24, 24, 24, 24, 24]
    s = NativeSession(
        write_native_session(tmp_path / "s", trial_lengths=lengths, shuffle_tiers=False)
    )
    with caplog.at_level(logging.WARNING):
        ds = SessionDataset(s, "train", crop_frame=16)
    assert ds.crop_frame == 12 and "crop_frame 16" in caplog.text
    assert {ds[i]["video"].shape[1] for i in range(len(ds))} == {12}
    assert ds.equal_lengths
    assert not SessionDataset(s, "train", random_crop=False).equal_lengths


def test_hidden_test_responses(session):
    ds = SessionDataset(session, "live_test_main", transform_input=1, transform_output=1)
    assert ds.responses_hidden
    item = ds[0]
    assert item["video"].shape[1] == session.trial_length(ds.trial_ids[0])
    assert torch.all(item["response"] == 0)


def _train_items(ds):
    return [ds[i] for i in range(len(ds))]


def test_input_standardise_and_normalise(session):
    stats = session.statistics()
    ds = SessionDataset(session, "train", transform_input=1)
    items = _train_items(ds)
    video = torch.cat([it["video"].flatten() for it in items]).double()
    assert abs(video.mean().item()) < 1e-4 and abs(video.std(unbiased=False).item() - 1) < 1e-4
    pupil = torch.cat([it["pupil_center"] for it in items], dim=1).double()
    torch.testing.assert_close(
        pupil.mean(1), torch.zeros(2, dtype=torch.float64), atol=1e-4, rtol=0
    )
    # behaviour: divided by its std, not centred (running speed stays >= 0)
    behavior = torch.cat([it["behavior"] for it in items], dim=1).double()
    torch.testing.assert_close(
        behavior.std(1, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-4, rtol=0
    )
    expected_mean = torch.as_tensor(stats["behavior"]["mean"] / stats["behavior"]["std"]).double()
    torch.testing.assert_close(behavior.mean(1), expected_mean, atol=1e-4, rtol=1e-4)
    assert behavior[1].min() >= 0

    items = _train_items(SessionDataset(session, "train", transform_input=2))
    for key in ("video", "behavior", "pupil_center"):
        x = torch.cat([it[key].reshape(it[key].shape[0], -1) for it in items], dim=1)
        assert x.min() >= -1e-6 and x.max() <= 1 + 1e-6
        assert x.min() < 1e-3 and x.max() > 1 - 1e-3


def test_output_divide_by_std_nonnegative_and_inverse(session):
    stats = session.statistics()
    ds = SessionDataset(session, "train", transform_output=1)
    raw = SessionDataset(session, "train")
    for i in range(len(ds)):
        y, r = ds[i]["response"], raw[i]["response"]
        assert y.min() >= 0
        expected = r / torch.as_tensor(stats["responses"]["std"])[:, None]
        torch.testing.assert_close(y, expected)
        torch.testing.assert_close(ds.output_transform.inverse(y), r)
    # batched (B, N, T) inverse
    batch = torch.stack([ds[0]["response"], ds[1]["response"][:, : ds[0]["response"].shape[1]]])
    back = ds.output_transform.inverse(batch)
    torch.testing.assert_close(back[0], raw[0]["response"])


def test_output_normalise_in_unit_range(session):
    ds = SessionDataset(session, "train", transform_output=2)
    y = torch.cat([ds[i]["response"] for i in range(len(ds))], dim=1)
    assert y.min() >= 0 and y.max() <= 1 + 1e-6
    torch.testing.assert_close(y.amax(1), torch.ones(7))
    raw = SessionDataset(session, "train")[0]["response"]
    torch.testing.assert_close(ds.output_transform.inverse(ds[0]["response"]), raw)


def test_response_precision_threshold():
    std = np.array([2.0, 1.0, 1e-6, 0.0])
    stats = {"responses": {"std": std, "mean": std, "min": 0 * std, "max": std}}
    t = OutputTransform(stats, 1)
    threshold = 0.01 * std.mean()
    torch.testing.assert_close(
        t.scale[:, 0], torch.tensor([2.0, 1.0, threshold, threshold], dtype=torch.float32)
    )
    r = torch.tensor([[-1e-8, 0.0, 4.0]]).repeat(4, 1)
    y = t(r)
    assert y.min() >= 0  # tiny negative deconvolution values are clipped
    torch.testing.assert_close(t.inverse(y)[:, 1:], r[:, 1:])


def test_transforms_reduce_statistics_with_a_frame_axis():
    # shipped statistics may carry a frame axis: reduced to one value per channel
    stats = {
        "videos": {"mean": np.full((4, 5, 3), 2.0), "std": np.full((4, 5, 3), 4.0)},
        "behavior": {"mean": np.ones((2, 3)), "std": np.full((2, 3), 2.0)},
        "pupil_center": {"mean": np.ones((2, 3)), "std": np.full((2, 3), 2.0)},
    }
    t = InputTransform(stats, 1)
    torch.testing.assert_close(t("videos", torch.full((1, 3, 4, 5), 6.0)), torch.ones(1, 3, 4, 5))
    torch.testing.assert_close(t("behavior", torch.full((2, 3), 4.0)), torch.full((2, 3), 2.0))
    torch.testing.assert_close(
        t.inverse("pupil_center", t("pupil_center", torch.ones(2, 3))), torch.ones(2, 3)
    )


def test_statistics_of_the_wrong_size(session):
    stats = session.statistics()
    stats["responses"]["std"] = stats["responses"]["std"][:3]
    with pytest.raises(DataFormatError, match="expected 7 values") as e:
        SessionDataset(session, "train", transform_output=1, statistics=stats)
    assert e.value.path == session.path and e.value.field == "statistics responses/std"
