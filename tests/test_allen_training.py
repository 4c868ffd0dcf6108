"""A short training run on converted Allen fixtures (2-photon + Neuropixels) and a synthetic mouse."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from allen_fixtures import write_ecephys_nwb, write_ophys_nwb
from neurotwin.data.allen.ecephys import convert_ecephys
from neurotwin.data.allen.ophys import convert_ophys

CONFIGS = Path(__file__).parents[1] / "configs"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("neurotwin.training.video") is None
    or importlib.util.find_spec("neurotwin.cli.train") is None,
    reason="training (neurotwin.training.video, neurotwin.cli.train) not in this tree",
)


def test_mixed_allen_and_synthetic_training_run(tmp_path):
    from neurotwin.cli import train as train_cli
    from neurotwin.data import synthetic
    from neurotwin.data.native import find_sessions

    data = tmp_path / "data"
    synthetic.generate(
        data,
        mice=1,
        frames=20,
        neurons=12,
        train_trials=6,
        oracle_clips=1,
        oracle_repeats=2,
        test_clips=1,
        test_repeats=2,
        progress=False,
    )
    frame = (18, 32)  # the synthetic "small" frame size: one core sees every session
    write_ophys_nwb(
        tmp_path / "o.nwb", movies={"natural_movie_one": 40}, repeats=3, template_shape=frame
    )
    convert_ophys(tmp_path / "o.nwb", data, frame_size=frame, clip_length=20)
    write_ecephys_nwb(
        tmp_path / "e.nwb", movies={"natural_movie_one": 40}, repeats={"natural_movie_one": 3}
    )
    convert_ecephys(tmp_path / "e.nwb", data, frame_size=frame, clip_length=20)
    assert len(find_sessions(data)) == 3

    out = tmp_path / "run"
    result = train_cli.main(
        [
            "--config",
            str(CONFIGS / "allen_ophys.yaml"),
            "--data_dir",
            str(data),
            "--output_dir",
            str(out),
            "--epochs",
            "1",
            "--crop_frame",
            "10",
            "--batch_size",
            "2",
            "--num_workers",
            "0",
            "--device",
            "cpu",
            "--core_num_layers",
            "1",
            "--core_hidden_dim",
            "4",
            "--verbose",
            "0",
        ]
    )
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "config.yaml").is_file()
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 1
    assert isinstance(result, dict)
    for name in ("allen-ophys-501940850", "allen-ecephys-715093703"):
        assert any(name in column for column in rows[0])  # validated on each converted session
