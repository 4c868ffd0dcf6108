"""The names of the native layout (Sensorium 2023 session folders): arrays, files and tiers.

data/videos/{trial}.npy        (H, W, T) float; frames past the trial's end are NaN
data/responses/{trial}.npy     (N, T)    deconvolved calcium activity (or counts), 30 Hz
data/behavior/{trial}.npy      (2, T)    pupil dilation, running speed
data/pupil_center/{trial}.npy  (2, T)    gaze x, y
meta/trials/tiers.npy          (n_trials,) str, indexed by the integer trial file name
meta/neurons/unit_ids.npy      (N,) int
meta/neurons/cell_motor_coordinates.npy  (N, 3) (int64 microns in the published data)
meta/statistics/{array}/all/{mean,std,min,max,median}.npy
data/opto/{trial}.npy          (K, T)    optional: optogenetic stimulation per frame (K channels)
"""

# Trial-wise arrays under data/{name}/{trial}.npy and their per-trial shapes.
VIDEOS = "videos"  # (H, W, T); frames past the trial's end are NaN
RESPONSES = "responses"  # (N, T)
BEHAVIOR = "behavior"  # (2, T): pupil dilation, running speed
PUPIL_CENTER = "pupil_center"  # (2, T): gaze x, y
TRIAL_ARRAYS = (VIDEOS, RESPONSES, BEHAVIOR, PUPIL_CENTER)
PIXEL_RANGE = (0.0, 255.0)  # grey levels of the frames of data/videos (black, white)
# Optional trial-wise array: (K, T) (or (T,) for one channel) optogenetic stimulation per frame,
# spatially uniform (e.g. LED power); when data/opto/ exists every trial has its file.
OPTO = "opto"

TIERS_FILE = "meta/trials/tiers.npy"
UNIT_IDS_FILE = "meta/neurons/unit_ids.npy"
COORDINATES_FILE = "meta/neurons/cell_motor_coordinates.npy"  # (N, 3) microns; int64 as published
STATISTICS_DIR = "meta/statistics"  # {array}/all/{stat}.npy, as shipped (see statistics.py)
STATISTIC_NAMES = ("mean", "std", "min", "max", "median")

TRAIN_TIER = "train"
ORACLE_TIER = "oracle"
TEST_TIERS = ("live_test_main", "live_test_bonus", "final_test_main", "final_test_bonus")
TIERS = (TRAIN_TIER, ORACLE_TIER, *TEST_TIERS, "none")

# Extra files neurotwin writes beside the published ones (never required by the reader).
SESSION_META_FILE = "meta/neurotwin.json"  # source, units, flags of converted/synthetic sessions
NOISELESS = "noiseless_responses"  # synthetic only: data/noiseless_responses/{trial}.npy, (N, T)
COMPUTED_STATISTICS_DIR = "meta/statistics_neurotwin"  # {tier}/: statistics neurotwin computed
CHECK_CACHE_FILE = "meta/checked_neurotwin.json"  # the trial files the start-up check passed
