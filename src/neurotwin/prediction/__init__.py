"""The parts of prediction (`neurotwin.predict` puts them together for a run, `neurotwin.ensemble`
for several):

- stream: the trials, each read once, batched by length, by worker processes (`trial_stream`)
- engine: the loop from batches to rates to outputs (`predict_plans`, `ModelRates`)
- writer: the thread that writes predictions while the GPU works on (`PredictionWriter`)
- scoring: the streamed correlations and the tier's metrics (`TierScorer`, `tier_metrics`)
- space: raw or normalized scores, the official loader's frames (`ScoreSpace`, `Precision`)
- breakdown: the area / stimulus labels metrics are broken down by
- submission: the Sensorium 2023 files to upload (`SubmissionWriter`)
- outputs: the .npz files, metrics.json/csv and the printed table
"""
