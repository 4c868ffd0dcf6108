"""Transfer (--pretrained_core RUN, --core_lr 0) and K-fold training (--folds N --fold K) on
small synthetic mice: a core trained on two mice, frozen, serves a third mouse it never saw
(fresh readout and shifter), which is then predicted; incompatible cores and bad folds are
refused with one clear line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurotwin.cli import train as train_cli
from neurotwin.config import ConfigError, from_dict
from neurotwin.data import loaders, synthetic
from neurotwin.predict import predict_run
from neurotwin.training.checkpoint import load_checkpoint
from neurotwin.training.video import train

SIZES = dict(
    neurons=10, train_trials=6, oracle_clips=2, oracle_repeats=2, test_clips=1,
    test_repeats=2, frames=64, height=10, width=16,
)  # fmt: skip
MODEL = {
    "core": {"name": "conv3d", "core_num_layers": 1, "core_hidden_dim": 4,
             "core_spatial_input_kernel": 5, "core_temporal_input_kernel": 5},
    "readout": {"name": "gaussian"},
    "shifter": {"shifter_mode": 1},
}  # fmt: skip


def _config(data, out, mice, **train_options):
    return from_dict(
        {
            "data": {"data_dir": str(data), "mouse_ids": list(mice), "crop_frame": 40,
                     "batch_size": 3, "num_workers": 0},
            "model": MODEL,
            "train": {"epochs": 1, "lr": 0.005, **train_options},
            "run": {"output_dir": str(out), "device": "cpu", "verbose": 0},
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("transfer")
    data = root / "data"
    synthetic.generate(data, mice=3, preset="small", seed=11, progress=False, **SIZES)
    mice = sorted(p.name for p in data.iterdir())
    train(_config(data, root / "base", mice[:2], epochs=2))
    return {"root": root, "data": data, "mice": mice, "run": root / "base"}


def _core(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state["model"].items() if k.startswith("core.")}


def test_a_frozen_transferred_core_predicts_a_new_mouse(base):
    new = base["mice"][2]
    out = base["root"] / "frozen"
    config = _config(base["data"], out, [new], epochs=2, core_lr=0.0)
    config.train.pretrained_core = str(base["run"])
    train(config)
    source = load_checkpoint(base["run"] / "checkpoints" / "best.pt")
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert list(state["sessions"]) == [new]  # a session the core never saw
    core, trained = _core(state), _core(source)
    assert core.keys() == trained.keys()
    for k in core:  # weights and batch-norm statistics as the pretrained run left them
        torch.testing.assert_close(core[k], trained[k], rtol=0, atol=0)
    readout = [k for k in state["model"] if k.startswith(f"readouts.{new}.")]
    assert readout and all(not k.startswith("readouts.") or new in k for k in state["model"])
    result = predict_run(out, tiers=["oracle", "live_test_main"], verbose=0)
    m = result["sessions"][new]["oracle"]
    assert m["n_trials"] > 0 and isinstance(m["single_trial_correlation"], float)


def test_a_transferred_core_without_freezing_trains_on(base):
    out = base["root"] / "finetuned"
    config = _config(base["data"], out, [base["mice"][2]])
    config.train.pretrained_core = str(base["run"] / "checkpoints" / "best.pt")
    train(config)
    source = _core(load_checkpoint(base["run"] / "checkpoints" / "best.pt"))
    state = _core(load_checkpoint(out / "checkpoints" / "last.pt"))
    weights = [k for k in state if k.endswith("weight")]
    assert any(not torch.equal(state[k], source[k]) for k in weights)
    # one epoch at lr 0.005 moves a pretrained core a little, a random one is far away
    assert max((state[k] - source[k]).abs().max().item() for k in weights) < 0.1


def test_incompatible_core_and_bad_options_are_refused(base, capsys):
    argv = [
        "--data_dir", str(base["data"]), "--mouse_ids", base["mice"][2],
        "--core", "conv3d", "--core_num_layers", "1", "--core_hidden_dim", "6",
        "--core_spatial_input_kernel", "5", "--core_temporal_input_kernel", "5",
        "--epochs", "1", "--device", "cpu", "--num_workers", "0", "--crop_frame", "40",
        "--output_dir", str(base["root"] / "bad"), "--pretrained_core", str(base["run"]),
    ]  # fmt: skip
    with pytest.raises(SystemExit):
        train_cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--pretrained_core" in err
    assert "core_hidden_dim: 6 vs 4" in err
    assert not (base["root"] / "bad" / "checkpoints").exists()
    with pytest.raises(ConfigError, match="--core_lr: must be >= 0"):
        _config(base["data"], base["root"] / "x", base["mice"][:1], core_lr=-1.0)
    # resuming on other sessions still fails, pointing at --pretrained_core
    with pytest.raises(SystemExit):
        train_cli.main(["--restore", str(base["run"]), "--mouse_ids", base["mice"][2],
                        "--epochs", "3", "--verbose", "0"])  # fmt: skip
    assert "--pretrained_core" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# K-fold
# ------------------------------------------------------------------------------------------------


def test_folds_split_the_training_tier_deterministically():
    ids = np.arange(100, 147)
    kept = [loaders.fold_trials(ids, k, 5) for k in range(5)]
    left_out = [np.setdiff1d(ids, k) for k in kept]
    assert sorted(np.concatenate(left_out).tolist()) == ids.tolist()  # disjoint, cover all
    assert {len(x) for x in left_out} <= {9, 10}  # equal sizes within one
    np.testing.assert_array_equal(loaders.fold_trials(ids, 2, 5), kept[2])  # same every time
    np.testing.assert_array_equal(loaders.fold_trials(ids, 0, 1), ids)


def test_fold_training_uses_all_but_its_fold(base):
    mice = base["mice"][:1]
    config = _config(base["data"], base["root"] / "fold", mice, epochs=1)
    config.data.folds, config.data.fold = 3, 1
    built = loaders.build_loaders(config.data, {"train": "train", "val": "oracle"}, seed=7)
    dataset = built["train"][mice[0]].dataset
    all_train = loaders.open_sessions(config.data)[0].trial_ids("train")
    np.testing.assert_array_equal(dataset.trial_ids, loaders.fold_trials(all_train, 1, 3))
    assert len(dataset.trial_ids) == 4  # 6 training trials, 2 left out
    assert len(built["val"][mice[0]].dataset.trial_ids) == 4  # validation: the whole oracle tier
    summary = train(config)
    assert summary["epochs"] == 1
    with pytest.raises(ConfigError, match="--fold: must be in 0..2"):
        _config(base["data"], base["root"] / "y", mice).data.__class__(folds=3, fold=3)
