"""The optional opto input (data/opto/{trial}.npy, (K, T) or (T,)): read and checked by
NativeSession, appended to the movie as K spatially uniform channels, widening the model's input;
and, on ground truth, a model trained with it uses it: responses of a synthetic mouse scaled by
a known optogenetic gain are predicted better with the real stimulation than with none."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from native_fixture import write_native_session
from neurotwin.data import native
from neurotwin.data.dataset import SessionDataset
from neurotwin.data.native import NativeSession
from neurotwin.errors import DataFormatError

pytestmark = pytest.mark.usefixtures("one_thread")


def add_opto(folder, values_of_trial):
    n_trials = len(NativeSession(folder).tiers)
    (folder / "data" / native.OPTO).mkdir()
    for trial in range(n_trials):
        np.save(folder / "data" / native.OPTO / f"{trial}.npy", values_of_trial(trial))


def test_opto_channels_are_read_and_appended_to_the_movie(tmp_path):
    folder = write_native_session(tmp_path / "s", n_frames=24, frame_shape=(6, 8))
    assert NativeSession(folder).opto_channels == 0
    add_opto(
        folder, lambda t: np.stack([np.arange(24.0) + t, np.full(24, -1.0)]).astype(np.float32)
    )
    s = NativeSession(folder)
    assert s.opto_channels == 2
    trial = s.load_trial(1, frames=slice(3, 9))
    np.testing.assert_array_equal(trial[native.OPTO], [np.arange(3.0, 9.0) + 1, np.full(6, -1.0)])
    ds = SessionDataset(s, "oracle", random_crop=False)
    item = ds[0]
    index = int(ds.trial_ids[0])
    video = item["video"]
    assert video.shape[:2] == (3, 24) and video.shape[2:] == (6, 8)
    length = s.trial_length(index)
    expected = torch.arange(24.0)[:length] + index
    torch.testing.assert_close(video[1, :length], expected[:, None, None].expand(-1, 6, 8))
    assert (video[2, :length] == -1).all()  # opto values as stored, not transformed


def test_one_channel_files_and_bad_files(tmp_path):
    folder = write_native_session(tmp_path / "s", n_frames=24)
    add_opto(folder, lambda t: np.zeros(24, np.float32))
    assert NativeSession(folder).opto_channels == 1  # (T,) is one channel
    bad = folder / "data" / native.OPTO / "2.npy"
    np.save(bad, np.zeros(20, np.float32))
    with pytest.raises(DataFormatError, match=r"expected a float \(K, 24\)") as e:
        NativeSession(folder).load_trial(2)
    assert e.value.field == native.OPTO and "2.npy" in str(e.value)
    np.save(bad, np.zeros((2, 24), np.float32))
    with pytest.raises(DataFormatError, match="2 opto channels, but trial 0 has 1"):
        NativeSession(folder).load_trial(2)
    bad.unlink()
    with pytest.raises(DataFormatError, match="every trial needs its opto array"):
        NativeSession(folder).load_trial(2)


def test_the_start_up_data_check_reads_the_opto_files(tmp_path):
    folder = write_native_session(tmp_path / "data" / "s", n_frames=24)
    add_opto(folder, lambda t: np.zeros((1, 24), np.float32))
    report = native.check.check_sessions(tmp_path / "data", tiers=("train", "oracle"))
    n_trials = len(NativeSession(folder).tiers)
    assert report.files == 5 * n_trials  # four trial files and the opto file of each trial
    np.save(folder / "data" / native.OPTO / "3.npy", np.zeros((1, 23), np.float32))
    with pytest.raises(DataFormatError, match="23 frames, but the trial's video has 24") as e:
        native.check.check_sessions(tmp_path / "data", tiers=("train", "oracle"))
    assert e.value.field == native.OPTO
    np.save(folder / "data" / native.OPTO / "3.npy", np.zeros((3, 24), np.float32))
    with pytest.raises(DataFormatError, match=r"expected shape \(1, 'T'\)"):
        native.check.check_sessions(tmp_path / "data", tiers=("train", "oracle"))


OPTO_GAIN = 2.0  # responses x (1 + gain x stimulation)


@pytest.fixture(scope="module")
def opto_mouse(tmp_path_factory):
    """One synthetic mouse whose responses (and noiseless rates) are scaled by a known gain
    during random blocks of optogenetic stimulation (0 or 1, 8 frames long, per trial)."""
    from neurotwin.data import synthetic

    root = tmp_path_factory.mktemp("opto")
    synthetic.generate(
        root, mice=1, preset="small", seed=5, neurons=20, train_trials=24, oracle_clips=3,
        oracle_repeats=2, test_clips=1, test_repeats=1, frames=48, progress=False,
    )  # fmt: skip
    (folder,) = native.find_sessions(root)
    rng = np.random.default_rng(0)
    (folder / "data" / native.OPTO).mkdir()
    for path in sorted((folder / "data" / native.RESPONSES).glob("*.npy")):
        blocks = rng.integers(0, 2, 6).astype(np.float32)
        opto = np.repeat(blocks, 8)[None]  # (1, 48)
        np.save(folder / "data" / native.OPTO / path.name, opto)
        for name in (native.RESPONSES, "noiseless_responses"):
            f = folder / "data" / name / path.name
            if f.is_file():
                np.save(f, np.load(f) * (1 + OPTO_GAIN * opto))
    shutil.rmtree(folder / "meta" / "statistics_neurotwin", ignore_errors=True)
    return root


def test_a_model_trained_with_opto_uses_it(opto_mouse, tmp_path):
    """Oracle correlation with the real stimulation against with it zeroed (the gain triples the
    rate in about half of the frames): measured on CPU, seeds 1-3: 0.19-0.21 against 0.07-0.08."""
    from neurotwin import config as cfg
    from neurotwin.training.loop import Trainer
    from neurotwin.training.video import VideoTask

    argv = ["--data_dir", str(opto_mouse), "--output_dir", str(tmp_path / "run"), "--num_workers",
            "0", "--device", "cpu", "--verbose", "0", "--seed", "1", "--core", "conv3d",
            "--core_num_layers", "2", "--core_hidden_dim", "8", "--core_spatial_input_kernel", "5",
            "--core_temporal_input_kernel", "3", "--core_temporal_hidden_kernel", "3",
            "--crop_frame", "24", "--batch_size", "4", "--epochs", "6", "--lr", "0.005",
            "--shifter_mode", "0", "--core_behavior_mode", "0", "--schedule_free", "false"]  # fmt: skip
    config = cfg.parse_config(argv)
    trainer = Trainer(VideoTask(config), config)
    assert trainer.model.core.options.core_behavior_mode == 0
    first = next(m for m in trainer.model.core.modules() if isinstance(m, torch.nn.Conv3d))
    assert first.in_channels == 2  # the movie and the opto channel
    result = trainer.fit()
    best = torch.load(tmp_path / "run/checkpoints/best.pt", weights_only=True)["model"]
    trainer.model.load_state_dict(best)
    trainer.model.eval()

    class NoOpto(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, video, session, behavior, pupil_center):
            video = video.clone()
            video[:, 1:] = 0
            return self.model(video, session, behavior, pupil_center)

    with torch.no_grad():
        with_opto = trainer.task.validate(trainer.model).score
        without = trainer.task.validate(NoOpto(trainer.model)).score
    assert with_opto == pytest.approx(result["best_value"], abs=1e-6)
    assert with_opto > 0.15 and without < with_opto - 0.08, (with_opto, without)
