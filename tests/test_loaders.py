"""build_loaders, interleave, TrainStream and session_specs over three small sessions."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from native_fixture import published_name, write_native_session
from neurotwin.config import DataConfig
from neurotwin.data.loaders import (
    TrainStream,
    TrialSampler,
    build_loaders,
    interleave,
    session_specs,
)
from neurotwin.data.native import NativeSession
from neurotwin.errors import DataFormatError

SPLITS = {"train": "train", "val": "oracle"}


def _config(data_dir, **kw) -> DataConfig:
    base = {"data_dir": str(data_dir), "crop_frame": 12, "batch_size": 4, "num_workers": 0}
    return DataConfig(**{**base, **kw})


def _epoch(loaders, seed, epoch):
    return [(s, b["trial_id"].tolist(), b["video"]) for s, b in interleave(loaders, seed, epoch)]


def test_every_training_trial_once_per_epoch(native_dataset):
    loaders = build_loaders(_config(native_dataset), SPLITS, seed=0)
    assert set(loaders) == {"train", "val"}
    assert sorted(loaders["train"]) == sorted(published_name(i) for i in range(3))
    for epoch in range(2):
        seen: dict[str, Counter] = {}
        sessions = []
        for session, batch in interleave(loaders["train"], seed=0, epoch=epoch):
            sessions.append(session)
            assert set(batch["session"]) == {session}
            assert batch["video"].shape[1:] == (1, 12, 6, 8)
            seen.setdefault(session, Counter()).update(batch["trial_id"].tolist())
        for name, loader in loaders["train"].items():
            expected = loader.dataset.session.trial_ids("train").tolist()
            assert sorted(seen[name].elements()) == expected  # each exactly once
            assert sessions.count(name) == len(loader) == 2  # 6 trials, batches of 4
        # sessions are interleaved, not one after the other
        assert sessions != sorted(sessions)


def test_interleave_deterministic_under_seed_and_epoch(native_dataset):
    cfg = _config(native_dataset)
    a = _epoch(build_loaders(cfg, SPLITS, seed=5)["train"], 5, 3)
    b = _epoch(build_loaders(cfg, SPLITS, seed=5)["train"], 5, 3)
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for x, y in zip(a, b):
        torch.testing.assert_close(x[2], y[2])
    c = _epoch(build_loaders(cfg, SPLITS, seed=5)["train"], 5, 4)
    assert [x[:2] for x in a] != [x[:2] for x in c]
    d = _epoch(build_loaders(cfg, SPLITS, seed=6)["train"], 6, 3)
    assert [x[:2] for x in a] != [x[:2] for x in d]


def test_workers_give_the_same_batches(native_dataset):
    loaders0 = build_loaders(_config(native_dataset, mouse_ids=["29002-2-3"]), SPLITS, seed=1)
    loaders2 = build_loaders(
        _config(native_dataset, mouse_ids=["29002-2-3"], num_workers=2), SPLITS, seed=1
    )
    a, b = _epoch(loaders0["train"], 1, 2), _epoch(loaders2["train"], 1, 2)
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for x, y in zip(a, b):
        torch.testing.assert_close(x[2], y[2])


def test_evaluation_loaders_whole_trials_in_order(native_dataset):
    loaders = build_loaders(_config(native_dataset), {"val": "oracle", "test": "live_test_main"}, 0)
    for name, loader in loaders["val"].items():
        session = loader.dataset.session
        ids = [i for b in loader for i in b["trial_id"].tolist()]
        assert ids == session.trial_ids("oracle").tolist()
        lengths = {session.trial_length(i) for i in ids}
        assert loader.batch_size == (4 if len(lengths) == 1 else 1)
        for batch in loader:
            b = len(batch["trial_id"])
            t = session.trial_length(batch["trial_id"][0].item())
            assert batch["video"].shape == (b, 1, t, 6, 8)
            assert batch["response"].shape == (b, session.n_neurons, t)
        assert loaders["test"][name].dataset.responses_hidden


def test_equal_length_evaluation_batches(tmp_path):
    write_native_session(tmp_path / "m1", trial_lengths=24)
    loaders = build_loaders(_config(tmp_path, batch_size=2), {"val": "oracle"}, 0)
    (batch,) = list(loaders["val"]["m1"])
    assert batch["video"].shape == (2, 1, 24, 6, 8)


def test_crop_length_shared_by_all_sessions(tmp_path):
    """A session whose shortest training trial is short shortens every session's crops, so that
    all training batches have one shape (a compiled core never recompiles)."""
    write_native_session(tmp_path / "m1", trial_lengths=24)
    write_native_session(tmp_path / "m2", trial_lengths=10)
    loaders = build_loaders(_config(tmp_path, crop_frame=20), SPLITS, 0)["train"]
    shapes = {b["video"].shape[2] for _, b in interleave(loaders, 0, 0)}
    assert shapes == {10}


def test_rank_sharding(native_dataset):
    cfg = _config(native_dataset, batch_size=1)
    shares = [build_loaders(cfg, SPLITS, seed=2, rank=r, world_size=4) for r in range(4)]
    name = published_name(0)
    for split, tier in SPLITS.items():
        ids = [
            [b["trial_id"].item() for _, b in interleave({name: s[split][name]}, 2, 0)]
            for s in shares
        ]
        trials = shares[0][split][name].dataset.session.trial_ids(tier).tolist()
        assert sorted(set().union(*map(set, ids))) == trials  # together: every trial
        if split == "train":  # 6 trials on 4 ranks: padded to 2 each
            assert [len(x) for x in ids] == [2, 2, 2, 2]
        else:  # evaluation: 2 trials, no padding, no duplicates
            assert sorted(sum(ids, [])) == trials


def test_trial_sampler():
    s = TrialSampler(10, shuffle=True, seed=1)
    first = list(s)
    assert sorted(first) == list(range(10)) and first == list(s)
    s.set_epoch(1)
    assert list(s) != first and sorted(s) == list(range(10))
    parts = [list(TrialSampler(10, True, 1, r, 3)) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4] and set(sum(parts, [])) == set(range(10))
    parts = [list(TrialSampler(10, False, 1, r, 3, pad=False)) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(10))
    assert len(TrialSampler(10, False, 1, 2, 3, pad=False)) == 3
    with pytest.raises(ValueError):
        TrialSampler(3, True, rank=2, world_size=2)


def test_limit_data_and_neurons(native_dataset):
    cfg = _config(native_dataset, limit_data=3, limit_neurons=4, batch_size=8)
    loaders = build_loaders(cfg, SPLITS, seed=0)
    for name, loader in loaders["train"].items():
        (batch,) = list(loader)
        assert len(batch["trial_id"]) == 3 and batch["response"].shape[1] == 4
        assert set(batch["trial_id"].tolist()) <= set(
            loader.dataset.session.trial_ids("train").tolist()
        )
        assert len(loaders["val"][name].dataset) == 2  # limit_data is for training only


def test_unknown_session_and_empty_tier(native_dataset):
    with pytest.raises(DataFormatError, match="not a session folder or alias"):
        build_loaders(_config(native_dataset, mouse_ids=["A"]), SPLITS, 0)
    with pytest.raises(DataFormatError, match="has no trials"):
        build_loaders(_config(native_dataset), {"test": "final_test_bonus"}, 0)


def test_session_specs(native_dataset):
    for mode in (0, 1, 2):
        cfg = _config(native_dataset, transform_output=mode)
        specs = session_specs(cfg)
        assert sorted(specs) == sorted(published_name(i) for i in range(3))
        for name, spec in specs.items():
            s = NativeSession(native_dataset / name)
            assert set(spec) == {
                "n_neurons", "coordinates", "mean_response", "unit_ids", "pixel_range",
                "behavior_mean", "opto_channels",
            }  # fmt: skip
            assert spec["opto_channels"] == 0  # no data/opto/
            assert spec["n_neurons"] == s.n_neurons
            assert spec["coordinates"].shape == (s.n_neurons, 3)
            np.testing.assert_array_equal(spec["unit_ids"], s.unit_ids)
            # the mean of the transformed training responses
            loader = build_loaders(cfg, {"all": "train"}, 0)["all"][name]
            y = torch.cat([b["response"][0] for b in loader], dim=1)
            np.testing.assert_allclose(spec["mean_response"], y.mean(1).numpy(), rtol=1e-4)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_session_specs_pixel_range_is_black_and_white_in_the_model_units(native_dataset, mode):
    """The video the model sees is lo + (hi - lo) * raw / 255 with (lo, hi) the spec's
    pixel_range, for every transform_input (float32 rounding: 1e-5 relative)."""
    cfg = _config(native_dataset, transform_input=mode, crop_frame=-1, batch_size=1)
    specs = session_specs(cfg)
    for name, loader in build_loaders(cfg, {"all": "train"}, 0)["all"].items():
        lo, hi = specs[name]["pixel_range"]
        assert (lo, hi) == (0.0, 255.0) if mode == 0 else hi > lo
        batch = next(iter(loader))
        raw = NativeSession(native_dataset / name).load_trial(int(batch["trial_id"][0]))
        want = lo + (hi - lo) * np.moveaxis(raw["videos"], -1, 0) / 255.0
        got = batch["video"][0, 0].numpy()  # the trial's frames, without the NaN padding
        want = want[: got.shape[0]]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * (hi - lo))


def test_shipped_statistics_with_a_frame_axis(tmp_path):
    # the published statistics keep a frame axis (computed over trials only)
    path = write_native_session(tmp_path / "m1", shipped_statistics="per_frame", trial_lengths=24)
    assert np.load(path / "meta/statistics/responses/all/std.npy").shape == (7, 24)
    cfg = _config(tmp_path, shipped_statistics=True, transform_input=1, transform_output=1)
    (loader,) = build_loaders(cfg, {"train": "train"}, 0)["train"].values()
    batches = [b for _, b in interleave({"m1": loader}, 0, 0)]
    assert all(b["response"].min() >= 0 for b in batches)
    video = torch.cat([b["video"].flatten() for b in batches])
    assert abs(video.mean().item()) < 0.2 and abs(video.std().item() - 1) < 0.2
    spec = session_specs(cfg)["m1"]
    assert spec["mean_response"].shape == (7,) and np.all(spec["mean_response"] > 0)


def _assert_same_batches(a, b):
    """Two lists of (session, batch) pairs hold the same sessions and exactly the same batches."""
    assert [s for s, _ in a] == [s for s, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert type(x[key]) is type(y[key])
            if isinstance(x[key], torch.Tensor):
                assert x[key].dtype == y[key].dtype
                torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)
            else:
                assert x[key] == y[key]


STREAM_CASES = {
    "batches of 4": ({}, 0, 1),
    "whole trials of unequal length: batches of 1": ({"crop_frame": -1}, 0, 1),
    "limit_data": ({"limit_data": 5, "batch_size": 2}, 0, 1),
    "rank 1 of 4": ({"batch_size": 1}, 1, 4),
    "rank 2 of 3": ({"batch_size": 2, "limit_data": 5}, 2, 3),
}


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("case", list(STREAM_CASES))
def test_train_stream_gives_what_interleave_gives(native_dataset, case, num_workers):
    kw, rank, world_size = STREAM_CASES[case]
    cfg = _config(native_dataset, **kw)
    train = build_loaders(cfg, SPLITS, seed=3, rank=rank, world_size=world_size)["train"]
    stream = TrainStream(train, num_workers=num_workers, seed=3)
    assert stream.loader.persistent_workers == (num_workers > 0)
    for epoch in range(2):
        got = list(stream.epoch(epoch))
        assert len(got) == len(stream)
        _assert_same_batches(got, list(interleave(train, 3, epoch)))


def test_train_stream_persistent_workers_follow_the_epoch(native_dataset):
    """Workers outlive epoch 0 and never see set_epoch: epoch 1 must still crop as epoch 1."""
    cfg = _config(native_dataset, batch_size=2)
    stream = TrainStream(build_loaders(cfg, SPLITS, seed=1)["train"], num_workers=2, seed=1)
    crops = []
    for epoch in range(2):
        crops.append(
            {
                (s, t): video
                for s, batch in stream.epoch(epoch)
                for t, video in zip(batch["trial_id"].tolist(), batch["video"])
            }
        )
    assert crops[0].keys() == crops[1].keys()
    assert any(not torch.equal(crops[0][k], crops[1][k]) for k in crops[0])
    fresh = build_loaders(cfg, SPLITS, seed=1)["train"]  # never set to epoch 0 before
    expected = list(interleave(fresh, 1, 1))
    _assert_same_batches(list(stream.epoch(1)), expected)
    for s, batch in expected:
        for t, video in zip(batch["trial_id"].tolist(), batch["video"]):
            assert torch.equal(crops[1][(s, t)], video)


def test_train_stream_length(native_dataset):
    for kw, rank, world_size, expected in [
        ({}, 0, 1, 3 * 2),  # 6 trials a session, batches of 4
        ({"limit_data": 5, "batch_size": 2}, 0, 1, 3 * 3),
        ({"batch_size": 1}, 1, 4, 3 * 2),  # 6 trials on 4 ranks: 2 each
        ({"crop_frame": -1}, 0, 1, 3 * 6),  # unequal whole trials: one a batch
    ]:
        train = build_loaders(_config(native_dataset, **kw), SPLITS, 0, rank, world_size)["train"]
        stream = TrainStream(train, num_workers=0)
        assert len(stream) == sum(len(x) for x in train.values()) == expected
        assert len(list(stream.epoch(0))) == expected


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_stream_leaves_the_global_rng_alone(native_dataset, num_workers):
    """Reading data draws nothing from torch's RNG: a resumed run (which restores that RNG)
    continues as the uninterrupted one, whether or not the workers were already running."""
    train = build_loaders(_config(native_dataset), SPLITS, 0)["train"]
    stream = TrainStream(train, num_workers=num_workers)
    for epoch in range(2):
        state = torch.get_rng_state()
        list(stream.epoch(epoch))
        assert torch.equal(state, torch.get_rng_state())


def test_dataset_item_of_an_epoch(native_dataset):
    (loader,) = build_loaders(_config(native_dataset, mouse_ids=["29002-2-3"]), SPLITS, 0)[
        "train"
    ].values()
    dataset = loader.dataset
    dataset.set_epoch(3)
    a = dataset[2]
    dataset.set_epoch(0)
    b = dataset.item(2, 3)
    assert dataset.epoch == 0 and dataset.frames(2, 3) != dataset.frames(2)
    _assert_same_batches([("", a)], [("", b)])
