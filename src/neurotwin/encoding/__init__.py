"""Encoding models: features of pretrained networks -> responses of every neuron.

stimuli (sessions, clips, distinct frames) -> embeddings (computed once, cached) -> splits ->
regression (one multi-output solve) -> scores (r, R^2, sklearn metrics, noise ceilings) ->
tables (scores.parquet, predictivity.parquet), figures, summary.json. `run.run_encoding` runs it
all; `neurotwin-encode` is its command line (neurotwin.cli.encode).
"""
