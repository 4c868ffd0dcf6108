"""Each analysis, run on the synthetic generator's ground-truth module, recovers the truth that
generated the data (tolerances stated at each assert). One small session at the small preset's
frame size (18 x 32) with the `surround` variant at 40%: that share of the simple and complex
cells has an iso-oriented divisive surround, the others none, the centre-surround cells a linear
one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neurotwin import analysis
from neurotwin.analysis import groundtruth as G
from neurotwin.analysis.context import Context
from neurotwin.analysis.size import SizeAnalysis, SizeOptions, Targets, tuning_metrics
from neurotwin.data import synthetic
from neurotwin.data.synthetic.load import session_population

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = dict(
    neurons=40, train_trials=6, oracle_clips=1, oracle_repeats=2, test_clips=1, test_repeats=1
)


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory):
    """The session, the truth subject, the analyses' tables (size and contextual compute arf
    and tuning first, as their dependencies) and the truth at the held gaze."""
    root = tmp_path_factory.mktemp("truth_analysis")
    data = root / "data"
    synthetic.generate(
        data, mice=1, seed=2, progress=False, variants=["surround"], surround_fraction=0.4, **SIZES
    )
    run = root / "run"
    subject = analysis.open_subject(run, data_dir=data, truth=True)
    session = subject.sessions[next(iter(subject.sessions))].name
    summaries = {
        name: analysis.run(name, run, subject=subject, progress=False)
        for name in ("contextual", "readout")
    }
    summaries["mei"] = analysis.run(
        "mei", run, subject=subject, progress=False, neurons=[0, 1, 2, 5], steps=80
    )
    tables = {
        name: pd.read_parquet(run / "analysis" / name / f"{session}.parquet")
        for name in ("arf", "tuning", "size", "contextual", "readout", "mei")
    }
    probe = subject.probe(session)
    truth = G.truth_table(probe.session.path, probe.pupil_center)
    return {
        "run": run,
        "subject": subject,
        "session": session,
        "tables": tables,
        "truth": truth,
        "summaries": summaries,
    }


def test_outputs_are_written(probed) -> None:
    folder = probed["run"] / "analysis"
    session = probed["session"]
    for name, table in probed["tables"].items():
        assert {"neuron", "unit_id"} <= set(table.columns), name
        assert (folder / name / f"{session}.npz").is_file()
        assert list((folder / name).glob(f"{session}_*.png")), name
        summary = json.loads((folder / name / "summary.json").read_text())
        assert summary["analysis"] == name and summary["run"]["subject"] == "truth"
        assert "grating" in summary["conventions"] and session in summary["conventions"]["sessions"]
        assert not list((folder / name).glob(".*")), "temporary files left behind"
    assert len(probed["tables"]["arf"]) == SIZES["neurons"]
    assert len(list((folder / "mei").glob("*.gif"))) == 5  # 4 neurons + the population


def test_arf_centres_within_one_pixel(probed) -> None:
    errors = G.compare(probed["truth"], arf=probed["tables"]["arf"])
    divisive = (probed["truth"]["surround"] == "divisive").to_numpy()
    # every cell without a divisive surround (all three cell types) within 1 pixel; a divisive
    # surround suppresses the responses to noise around the field, which skews the energy
    # maps of complex cells somewhat: median 0.5, every cell 1.5 pixels
    assert errors["center_error_px"][~divisive].max() < 1.0
    assert errors["center_error_px"][divisive].median() < 0.5
    assert errors["center_error_px"][divisive].max() < 1.5
    arf = probed["tables"]["arf"]
    kinds = probed["truth"]["cell_type"].to_numpy()
    # simple and centre-surround cells have linear maps with the truth's polarity; complex
    # cells are found by their energy maps
    linear = arf["map"].to_numpy() == "linear"
    assert linear[kinds == "simple"].mean() >= 0.9 and not linear[kinds == "complex"].any()
    dog = kinds == "center_surround"
    assert (arf["polarity"].to_numpy()[dog] == probed["truth"]["polarity"].to_numpy()[dog]).all()
    assert (arf["fit_r2"][linear] > 0.7).all()


def _orientation_tuned(session_dir: Path, truth: pd.DataFrame) -> np.ndarray:
    """Gabor cells whose own filter responds to the orthogonal grating at its preferred
    frequency with less than half the preferred response (the others are barely tuned)."""
    pop, sizes, _, _ = session_population(session_dir)
    y, x = np.mgrid[0 : sizes.height, 0 : sizes.width]
    quad = {int(n): k for k, n in enumerate(np.flatnonzero(pop.cell_type == 1))}
    tuned = np.zeros(len(truth), bool)
    for i in np.flatnonzero(truth["cell_type"].isin(["simple", "complex"])):
        theta, f = np.radians(truth["orientation_deg"][i]), truth["preferred_sf_cpp"][i]
        filters = [pop.rf[i]] + ([pop.rf_quadrature[quad[i]]] if i in quad else [])

        def drive(a: float, filters=filters, f=f) -> float:
            wave = np.exp(2j * np.pi * f * (x * np.cos(a) + y * np.sin(a))).ravel()
            return float(np.sqrt(sum(abs((g * wave).sum()) ** 2 for g in filters)))

        tuned[i] = drive(theta + np.pi / 2) < 0.5 * drive(theta)
    return tuned


def test_tuning_recovers_orientation_and_frequency(probed) -> None:
    truth, tuning = probed["truth"], probed["tables"]["tuning"]
    errors = G.compare(truth, probed["tables"]["arf"], tuning)
    plain = (truth["surround"] == "none").to_numpy() & truth["cell_type"].isin(
        ["simple", "complex"]
    ).to_numpy()
    tuned = _orientation_tuned(probed["subject"].probe(probed["session"]).session.path, truth)
    assert (plain & tuned).sum() >= 5
    # cells without a surround: every orientation-tuned one within 10 degrees, median < 3
    assert errors["orientation_error_deg"][plain & tuned].max() < 10.0
    assert errors["orientation_error_deg"][plain].median() < 3.0
    # preferred spatial frequency within a factor 1.25 (median), 1.6 (each tuned cell)
    ratio = errors["sf_ratio"][plain & tuned].to_numpy()
    assert abs(np.log(np.median(ratio))) < np.log(1.25) and np.abs(np.log(ratio)).max() < np.log(
        1.6
    )
    # full-field gratings drive the divisive surround too: orientation still within 10 degrees
    # for most of those cells (median), and selective cells have significant OSI
    divisive = (truth["surround"] == "divisive").to_numpy()
    assert errors["orientation_error_deg"][divisive].median() < 10.0
    assert (tuning["osi_p"][plain & tuned] < 0.05).all()
    assert tuning["dsi"].median() < 0.05  # separable filters: no direction selectivity


def test_size_tuning_recovers_the_generators(probed) -> None:
    """Truth: the size analysis's own procedure applied to the generator's parameters: the same
    stimuli at each cell's true centre and orientation, at the frequency that a disc of 3 true
    sigmas there prefers. The analysis found centre, sigma, direction and frequency itself."""
    subject, session, truth = probed["subject"], probed["session"], probed["truth"]
    size = probed["tables"]["size"]
    analysis_ = SizeAnalysis(SizeOptions())
    targets = Targets(
        truth[["center_x", "center_y"]].to_numpy(),
        np.nan_to_num(truth["orientation_deg"].to_numpy()),
        np.full(len(truth), 0.1),
    )
    ctx = Context(subject, probed["run"] / "scratch", progress=False)
    sigma = np.sqrt(truth["sigma_px"] * truth["sigma_orth_px"]).to_numpy()
    targets.sf = analysis_.patch_sf(ctx, session, targets, 3 * sigma)
    responses, baseline = analysis_.measure(ctx, session, targets)
    sizes = analysis_.sizes(subject.probe(session).frame_shape[1])
    expected = pd.DataFrame(tuning_metrics(responses.mean(-1) - baseline[:, None, None], sizes))
    divisive = (truth["surround"] == "divisive").to_numpy()
    plain = (truth["surround"] == "none").to_numpy()
    assert divisive.sum() >= 8
    # divisive surround: preferred size within a factor sqrt(2) (one size step) for >= 75%,
    # suppression index within 0.2 of the truth's for >= 75% and 0.1 in the median
    step = np.abs(np.log(size["preferred_size_px"] / expected["preferred_size_px"]))[divisive]
    assert (step <= np.log(np.sqrt(2)) + 1e-6).mean() >= 0.75
    si_error = np.abs(size["suppression_index"] - expected["suppression_index"])[divisive]
    assert (si_error < 0.2).mean() >= 0.75 and si_error.median() < 0.1
    # and the truth itself: suppression where there is a surround, none where there is none
    assert expected["suppression_index"][divisive].median() > 0.4
    assert size["suppression_index"][divisive].median() > 0.3
    assert (size["suppression_index"][plain] < 0.1).all()


def test_contextual_modulation_iso_suppresses_more_than_cross(probed) -> None:
    truth, ctx_table = probed["truth"], probed["tables"]["contextual"]
    divisive = (truth["surround"] == "divisive").to_numpy()
    plain = (truth["surround"] == "none").to_numpy()
    # iso-oriented divisive surround: cross > iso and iso < centre alone (full contrast)
    assert ctx_table["mi_cross_iso_c100"][divisive].median() > 0.2
    assert ctx_table["mi_iso_c100"][divisive].median() < -0.2
    assert np.abs(ctx_table["mi_cross_iso_c100"][plain]).max() < 0.05  # no surround: no effect
    tests = probed["summaries"]["contextual"]["sessions"][probed["session"]]["c100"]["wilcoxon"]
    assert tests["cross_vs_iso"]["p"] < 0.05 and tests["cross_vs_iso"]["median_difference"] > 0


def test_mei_matches_the_receptive_field(probed) -> None:
    """The most exciting image of a simple cell is its filter (correlation > 0.5); of a complex
    cell, a filter in the span of its quadrature pair (norm of both correlations > 0.5)."""
    subject, session = probed["subject"], probed["session"]
    pop, _, _, _ = session_population(subject.probe(session).session.path)
    mei = probed["tables"]["mei"]
    images = np.load(probed["run"] / "analysis" / "mei" / f"{session}.npz")["images"]
    quad = {int(n): k for k, n in enumerate(np.flatnonzero(pop.cell_type == 1))}
    for row, neuron in enumerate(mei["neuron"]):
        image = images[row].ravel() - subject.probe(session).grey
        c = np.corrcoef(image, pop.rf[neuron])[0, 1]
        if neuron in quad:
            c = np.hypot(c, np.corrcoef(image, pop.rf_quadrature[quad[neuron]])[0, 1])
        assert abs(c) > 0.5, neuron
    assert (mei["image_ratio"] > 1).all() and (mei["video_ratio"] > 1).all()
    summary = probed["summaries"]["mei"]["sessions"][session]
    assert summary["population_image_ratio"] > 1 and summary["population_video_ratio"] > 1


def test_readout_of_the_truth_is_the_truth(probed) -> None:
    table, truth = probed["tables"]["readout"], probed["truth"]
    np.testing.assert_allclose(table["readout_x"], truth["center_x"], atol=1e-4)
    np.testing.assert_allclose(table["readout_y"], truth["center_y"], atol=1e-4)
    np.testing.assert_allclose(
        table["readout_sigma_y"], np.minimum(truth["sigma_px"], truth["sigma_orth_px"]), rtol=1e-4
    )
    slope = probed["summaries"]["readout"]["sessions"][probed["session"]]["shift_px_per_pupil_unit"]
    meta = json.loads(
        (
            probed["subject"].probe(probed["session"]).session.path / "meta/neurotwin.json"
        ).read_text()
    )
    gain = meta["mouse"]["gaze_shift_px_per_eye_px"]
    np.testing.assert_allclose(slope, [[gain, 0], [0, gain]], atol=1e-6)
