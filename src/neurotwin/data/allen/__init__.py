"""Allen Brain Observatory Visual Coding recordings -> the native session layout.

- `ophys.convert_ophys`: a 2-photon experiment NWB (NWB 1, BrainObservatoryCache's
  `ophys_experiment_data/<id>.nwb`) -> dF/F (or extracted events) per cell and movie frame.
- `ecephys.convert_ecephys`: a Neuropixels session NWB (NWB 2, EcephysProjectCache's
  `session_<id>/session_<id>.nwb`) -> spike counts per unit and movie frame.
- CLI: `neurotwin-data allen-ophys`, `neurotwin-data allen-ecephys` (neurotwin.cli.data_allen).

Both read the files with h5py alone. allensdk is needed only to download by id.

allensdk and Python (checked with pip against PyPI, November 2026). allensdk wheels are
py3-none-any and declare no Requires-Python, so what decides is their pins:
- allensdk 2.16.0-2.16.2 (newest): numpy<1.24, pandas==1.5.3, scipy<1.11; these have wheels
  for Python 3.8-3.11 only, so it installs on 3.8-3.11 (resolves on 3.10 and 3.11) and fails to
  resolve on 3.12 and 3.13 ("No matching distribution found for numpy<1.24").
- allensdk 2.15.x / 2.14.x: classifiers 3.7-3.9, hdmf<=3.4.7 (2.15), statsmodels<=0.13.0.
- allensdk 2.11-2.13: classifiers 3.6-3.8 (2.11: numpy<1.19, pandas<=0.25.3, h5py<3).
- neurotwin itself needs numpy>=1.24, so allensdk 2.16 cannot share its environment:
  `pip install numpy>=1.24 allensdk>=2.16` is ResolutionImpossible on every Python.
- A fresh Python 3.11 environment with `pip install allensdk==2.16.2` installs, but then needs
  `statsmodels<0.14` (statsmodels 0.15 lacks multipletests in the place allensdk imports it from)
  and a matching pynwb/hdmf pair (`pynwb==2.6.0 hdmf==3.14.6`; the resolver picked pynwb 2.8.3
  with hdmf 6.2, which cannot read files) before BrainObservatoryNwbDataSet / EcephysSession work.

So: download in such a separate environment, e.g.

    python3.11 -m venv allen-env
    allen-env/bin/pip install allensdk==2.16.2 "statsmodels<0.14" pynwb==2.6.0 hdmf==3.14.6
    allen-env/bin/python -c "from allensdk.core.brain_observatory_cache import \\
        BrainObservatoryCache as C; print(C(manifest_file='data/allen_cache/manifest.json')\\
        .get_ophys_experiment_data(501940850).nwb_file)"

and convert the printed path with `neurotwin-data allen-ophys --nwb PATH --out data/allen_ophys`.
"""
