"""Comparing analysis tables with the synthetic generator's truth (meta/neurons/rf_truth), and
how well a model predicts each neuron relative to its ceiling.

The truth places receptive fields at the resting gaze; the analyses probe at the held gaze, so
truth centres are moved by the generator's gaze gain first (neurotwin.json: mouse.eye_center,
mouse.gaze_shift_px_per_eye_px).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurotwin import metrics as M
from neurotwin.data import native


def truth_table(session_dir: str | Path, pupil_center: np.ndarray):
    """The rf_truth table (pandas, one row per neuron) with centres at gaze `pupil_center`."""
    import pandas as pd

    from neurotwin.data.synthetic import read_rf_truth

    session_dir = Path(session_dir)
    truth = pd.DataFrame(read_rf_truth(session_dir))
    meta = json.loads((session_dir / native.SESSION_META_FILE).read_text())["mouse"]
    shift = meta["gaze_shift_px_per_eye_px"] * (
        np.asarray(pupil_center) - np.asarray(meta["eye_center"])
    )
    truth["center_x"] = truth["center_x"] + shift[0]
    truth["center_y"] = truth["center_y"] + shift[1]
    truth["unit_id"] = np.load(session_dir / native.UNIT_IDS_FILE)
    return truth


def orientation_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| of orientations in degrees, modulo 180 (0..90)."""
    d = np.abs((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) % 180.0)
    return np.minimum(d, 180.0 - d)


def compare(truth, arf=None, tuning=None, size=None) -> Any:
    """Per neuron (the rows of the given tables, joined on unit_id): centre error (px),
    orientation error (degrees), preferred spatial frequency over the truth's, and the truth's
    cell type and surround."""
    import pandas as pd

    out = truth.set_index("unit_id")[["cell_type", "surround"]].copy()
    t = truth.set_index("unit_id")
    if arf is not None:
        a = arf.set_index("unit_id")
        out = out.loc[a.index]
        out["center_error_px"] = np.hypot(
            a["center_x"] - t.loc[a.index, "center_x"], a["center_y"] - t.loc[a.index, "center_y"]
        )
    if tuning is not None:
        u = tuning.set_index("unit_id")
        out = out.loc[out.index.intersection(u.index)]
        idx = out.index
        out["orientation_error_deg"] = orientation_difference(
            u.loc[idx, "preferred_orientation_deg"], t.loc[idx, "orientation_deg"]
        )
        out["sf_ratio"] = u.loc[idx, "preferred_sf"] / t.loc[idx, "preferred_sf_cpp"]
    if size is not None:
        s = size.set_index("unit_id")
        out["preferred_size_px"] = s.loc[out.index, "preferred_size_px"]
        out["suppression_index"] = s.loc[out.index, "suppression_index"]
    return pd.DataFrame(out).reset_index()


def prediction_quality(
    subject, session: str, tier: str = native.ORACLE_TIER, skip: int | None = None
):
    """Per neuron: the model's single-trial correlation on `tier` (real behaviour and gaze, as in
    prediction) and the ceiling (the noiseless rates' correlation with the same responses),
    over the frames prediction scores: all but the first `skip` of every trial (None: the
    metrics' rule, `metrics.frames_to_skip` of the tier's valid lengths)."""
    probe = subject.probe(session)
    s = probe.session
    trials = [int(trial) for trial in s.trial_ids(tier)]
    lengths = [s.trial_length(trial) for trial in trials]
    skip = M.frames_to_skip(lengths) if skip is None else int(skip)
    model_acc, ceiling_acc = M.CorrelationAccumulator(), M.CorrelationAccumulator()
    dev = subject.device

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a)[None], device=dev).float()

    with torch.inference_mode():
        for trial, n in zip(trials, lengths):
            if n <= skip:
                continue  # no scored frame (as in prediction)
            d = s.load_trial(trial)
            video = t(np.moveaxis(d[native.VIDEOS][..., :n], -1, 0))
            behavior, pupil = t(d[native.BEHAVIOR][:, :n]), t(d[native.PUPIL_CENTER][:, :n])
            r = subject.respond(session, video, behavior, pupil)
            r = r[0].float().cpu().numpy()
            resp = d[native.RESPONSES][:, skip:n]
            model_acc.add(resp, r[:, skip:n])
            ceiling_acc.add(resp, s.load_noiseless(trial)[:, skip:n])
    return model_acc.result().cpu().numpy(), ceiling_acc.result().cpu().numpy()


def summary(
    errors, quality: tuple[np.ndarray, np.ndarray] | None = None, min_fraction: float = 0.5
) -> dict:
    """Median errors over all neurons and over those predicted at >= min_fraction of their
    ceiling (orientation over the oriented cells only)."""
    out: dict[str, Any] = {"neurons": int(len(errors))}
    sets = {"all": np.ones(len(errors), bool)}
    if quality is not None:
        corr, ceiling = quality
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(ceiling > 0, corr / ceiling, 0)
        sets[f"predicted >= {min_fraction:g} of ceiling"] = frac >= min_fraction
        out["fraction_of_ceiling_median"] = float(np.median(frac))
    for label, sel in sets.items():
        entry = {"n": int(sel.sum())}
        if "center_error_px" in errors:
            entry["center_error_median_px"] = (
                float(np.median(errors["center_error_px"][sel])) if sel.any() else None
            )
        if "orientation_error_deg" in errors:
            oriented = sel & errors["cell_type"].isin(["simple", "complex"]).to_numpy()
            entry["oriented"] = int(oriented.sum())
            entry["orientation_error_median_deg"] = (
                float(np.median(errors["orientation_error_deg"][oriented]))
                if oriented.any()
                else None
            )
        out[label] = entry
    return out
