"""Synthetic ground-truth mice, written in the native (Sensorium 2023) session layout.

A known generative model stands in for a mouse, so that a model's predictions can be compared with
the rates that really generated the data:

* **Stimuli** (shared statistics for every mouse): grey-scale movies in 0..255 made of
  spatio-temporal 1/f noise (power falling with spatial frequency, temporal bandwidth growing with
  spatial frequency as in natural movies), occluding objects (ellipses, long bars/edges) moving at
  constant velocity, and scene cuts. Some clips are shorter than the trial: their frames past the
  end are NaN, as in the published data.
* **Neurons** sit at cortical positions (`cell_motor_coordinates`, micrometres) that map smoothly
  (affine map with a mild quadratic term, plus local scatter) onto the screen. Each has a
  Gabor-like spatial receptive field (simple cells; complex cells as quadrature-pair energy units)
  or a centre-surround one, a causal biphasic temporal filter, a smooth rectifying nonlinearity
  (softplus above a per-neuron threshold), a multiplicative gain from running speed and pupil
  dilation, and Poisson noise with Gamma-distributed over-dispersion.
* **Behaviour**: smooth pupil dilation and running-speed traces (running in bouts, pupil dilating
  with locomotion); gaze (`pupil_center`, eye-camera pixels) with fixations, drifts and saccades.
  Gaze shifts every receptive field on the screen (equivalently, the image on the retina).
* **Tiers**: `train` (a new clip per trial), `oracle` (a few clips, each repeated several times),
  `live_test_main` and `final_test_main` (repeated clips; the responses of `final_test_main` are
  hidden as zeros, as in the published data). Oracle and test clips are shared by every mouse;
  trial files are numbered in random order.

Per session it writes, with `neurotwin.data.native.write_session`: the four trial arrays
(float32), `meta/trials/tiers.npy`, `meta/neurons/unit_ids.npy`, `cell_motor_coordinates.npy`,
`meta/statistics/...` computed like the published ones (see `shipped_statistics`), the noiseless
responses `data/noiseless_responses/{trial}.npy` (N, T), `meta/trials/video_ids.npy` (which trials
show the same clip) and `meta/neurotwin.json` ({"source": "synthetic", generator parameters, seed,
ceiling correlations}). Frames past a short trial's end are NaN in every trial array (and in the
noiseless responses); hidden responses are zeros throughout.

Every neuron's receptive-field truth (centre, orientation, spatial frequency, size, polarity,
cell type, surround) is written to `meta/neurons/rf_truth/{column}.npy` in the session's pixel
frame (see `RF_TRUTH_COLUMNS`), and `GroundTruthModel` (module `truth`) is the generating model
as a torch module with a trained model's call signature, for in-silico experiments.

Harder options that real data has (`VARIANTS`, off by default): more neurons than the trials can
pin down, strong behavioural modulation, large gaze shifts, slow drifts of each neuron's gain over
the recording, and iso-oriented divisive surrounds.

Modules: `params` (sizes, presets, parameters, variants), `stimuli` (movie clips), `behavior`,
`receptive_fields` (the population and its truth table), `population` (the rates), `drift`,
`statistics` (shipped statistics, ceilings), `mouse` (one session's trials), `writer` (folders,
`generate`, `ensure_synthetic`), `truth` (the torch module).

Generation streams one trial at a time (memory does not grow with the number of trials) and is
deterministic under the seed: every trial has its own random stream derived from
(seed, mouse, trial), so the result does not depend on generation order.
"""

from __future__ import annotations

from neurotwin.data.synthetic.load import RF_TRUTH_DIR, read_rf_truth, session_population
from neurotwin.data.synthetic.params import (
    FRAME_RATE,
    GENERATOR_VERSION,
    HIDDEN_TIERS,
    PRESETS,
    RECORDING_ORDER_FILE,
    REF_WIDTH,
    VARIANTS,
    VIDEO_IDS_FILE,
    ModelParams,
    SyntheticSizes,
    Variant,
)
from neurotwin.data.synthetic.receptive_fields import RF_TRUTH_COLUMNS
from neurotwin.data.synthetic.statistics import (
    ceiling_correlation,
    session_ceiling,
    shipped_statistics,
)
from neurotwin.data.synthetic.stimuli import make_clip
from neurotwin.data.synthetic.writer import ensure_synthetic, generate, session_names

__all__ = [
    "PRESETS",
    "VARIANTS",
    "SyntheticSizes",
    "ModelParams",
    "Variant",
    "generate",
    "ensure_synthetic",
    "ceiling_correlation",
    "session_ceiling",
    "shipped_statistics",
    "make_clip",
    "session_names",
    "GroundTruthModel",
    "read_rf_truth",
    "session_population",
    "RF_TRUTH_COLUMNS",
    "RF_TRUTH_DIR",
    "FRAME_RATE",
    "GENERATOR_VERSION",
    "HIDDEN_TIERS",
    "RECORDING_ORDER_FILE",
    "REF_WIDTH",
    "VIDEO_IDS_FILE",
]


def __getattr__(name: str):
    """GroundTruthModel on first use (it needs torch; `neurotwin-data --help` should not)."""
    if name == "GroundTruthModel":
        from neurotwin.data.synthetic.truth import GroundTruthModel

        return GroundTruthModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
