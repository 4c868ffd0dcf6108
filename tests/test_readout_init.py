"""Readout positions from the response-weighted stimulus average: planted receptive fields are
found, the retinotopic fit ignores outliers, positions go into both kinds of Gaussian readout, and
training with readout_init_positions starts from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurotwin.models.readouts.gaussian import GaussianOptions, GaussianReadout
from neurotwin.training import readout_init as R

H, W = 12, 20


def planted_trials(centres: np.ndarray, n_trials: int = 12, frames: int = 80, seed: int = 0):
    """White-noise movies (H, W, T) and Poisson responses of simple cells whose receptive field
    is a small Gaussian blob at `centres` (x, y pixels), responding at lag 2, with ON and OFF
    cells."""
    rng = np.random.default_rng(seed)
    gy, gx = np.mgrid[0:H, 0:W]
    rf = np.stack([np.exp(-((gx - x) ** 2 + (gy - y) ** 2) / 2.0) for x, y in centres])
    rf *= np.where(np.arange(len(centres)) % 2, -1.0, 1.0)[:, None, None]
    rf = rf.reshape(len(centres), -1)
    out = []
    for _ in range(n_trials):
        video = rng.normal(128, 40, size=(frames, H * W))
        drive = rf @ ((video - 128) / 40).T  # (N, T)
        drive = np.roll(drive, 2, axis=1)
        drive[:, :2] = 0
        rates = np.exp(0.6 * drive / drive.std(1, keepdims=True))
        responses = rng.poisson(rates).astype(np.float32)
        out.append((video.T.reshape(H, W, frames).astype(np.float32), responses))
    return out


def test_peaks_find_planted_receptive_fields():
    rng = np.random.default_rng(1)
    centres = np.column_stack([rng.uniform(2, W - 3, 30), rng.uniform(2, H - 3, 30)])
    energy = R.sta_energy(planted_trials(centres), len(centres), (H, W), lags=5)
    xy, strength = R.peaks(energy)
    error = np.hypot(*(xy - centres).T)
    assert np.median(error) < 0.75 and error.max() < 1.5  # pixels (peaks are whole pixels)
    assert np.all(strength > 2)


def test_chunks_over_neurons_give_the_same_maps():
    centres = np.array([[3.0, 3.0], [10.0, 6.0], [15.0, 9.0]])
    trials = planted_trials(centres, n_trials=3)
    whole = R.sta_energy(trials, 3, (H, W), lags=4)
    parts = torch.cat(
        [R.sta_energy(trials, 3, (H, W), 4, neurons=slice(i, i + 1)) for i in range(3)]
    )
    torch.testing.assert_close(whole, parts, rtol=1e-4, atol=1e-3)


def test_retinotopic_fit_recovers_a_smooth_map_despite_outliers():
    rng = np.random.default_rng(2)
    n = 200
    coords = np.column_stack([rng.uniform(0, 600, n), rng.uniform(0, 600, n), rng.uniform(0, 1, n)])
    truth = np.column_stack([2 + 0.025 * coords[:, 0], 1 + 0.015 * coords[:, 1]])
    peaks = truth + rng.normal(0, 0.5, (n, 2))
    wild = rng.random(n) < 0.25  # a quarter of the peaks anywhere on the screen
    peaks[wild] = np.column_stack([rng.uniform(0, W, wild.sum()), rng.uniform(0, H, wild.sum())])
    fitted = R.retinotopic_fit(peaks, np.full(n, 5.0), coords)
    assert fitted is not None
    assert np.median(np.hypot(*(fitted - truth).T)) < 0.2  # pixels
    assert np.hypot(*(fitted - truth).T)[wild].max() < 0.6  # outliers get the map's position


def test_retinotopic_fit_needs_coordinates_that_vary():
    peaks = np.zeros((40, 2))
    assert R.retinotopic_fit(peaks, np.full(40, 3.0), np.zeros((40, 3))) is None
    assert R.retinotopic_fit(peaks, np.full(40, 3.0), None) is None


def test_pixels_to_grid_uses_align_corners_coordinates():
    grid = R.pixels_to_grid(np.array([[0.0, 0.0], [W - 1, H - 1], [(W - 1) / 2, 30.0]]), (H, W))
    np.testing.assert_allclose(grid, [[-1, -1], [1, 1], [0, 1]], atol=1e-6)


@pytest.mark.parametrize("grid_mode", [0, 1])
def test_set_positions_in_free_and_coordinate_readouts(grid_mode):
    torch.manual_seed(0)
    n = 50
    rng = np.random.default_rng(3)
    coords = rng.uniform(0, 500, (n, 3))
    target = (coords[:, :2] / 500 * 1.4 - 0.7).astype(np.float32)  # a smooth map of them
    readout = GaussianReadout(
        (4, H, W), n, GaussianOptions(readout_grid_mode=grid_mode), coordinates=coords
    )
    note = readout.set_positions(target)
    error = (readout.mu.detach().numpy() - target).std()
    assert error < (1e-6 if grid_mode == 0 else 0.05), note


def test_set_positions_checks_the_shape():
    readout = GaussianReadout((4, H, W), 5, GaussianOptions(readout_grid_mode=0))
    with pytest.raises(ValueError, match=r"expected \(5, 2\)"):
        readout.set_positions(np.zeros((4, 2)))


def test_training_starts_from_the_estimated_positions(synthetic_mice, tmp_path):
    from neurotwin.cli.train import build_parser, resolve_config
    from neurotwin.training.loop import Trainer
    from neurotwin.training.video import VideoTask

    argv = ["--data_dir", str(synthetic_mice), "--crop_frame", "20", "--num_workers", "0"]
    argv += ["--core", "conv3d", "--core_num_layers", "1", "--core_hidden_dim", "4"]
    argv += ["--readout_grid_mode", "0", "--readout_init_positions", "true", "--device", "cpu"]
    argv += ["--output_dir", str(tmp_path / "run"), "--verbose", "0"]
    config = resolve_config(build_parser().parse_args(argv))
    task = VideoTask(config)
    trainer = Trainer(task, config)
    notes = [n for n in task.describe() if n.startswith("readout positions")]
    assert len(notes) == len(task.session_names)
    for name in task.session_names:
        mu = trainer.model.readouts[name].mu.detach()
        # uniform initialisation would keep every position within +-0.2
        assert mu.abs().max() > 0.3
        assert torch.all(mu.abs() <= 1)
