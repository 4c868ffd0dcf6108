"""`neurotwin-data allen-ophys` and `neurotwin-data allen-ecephys`: Allen NWB -> native sessions.

Local NWB files need only h5py. With allensdk importable, `--experiment-id` /
`--session-id` download into allensdk's cache first (see neurotwin.data.allen for which
allensdk installs on which Python).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from neurotwin.data.allen import presentations, trials
from neurotwin.errors import DataFormatError, NeurotwinError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "allensdk is not installed: `pip install neurotwin[allen]` needs an environment where "
    "allensdk resolves (allensdk 2.16.2: Python 3.8-3.11, numpy<1.24, pandas==1.5.3, "
    "scipy<1.11); otherwise download with allensdk in its own environment (see "
    "neurotwin.data.allen) and give --nwb PATH"
)


def register(subparsers) -> None:
    o = subparsers.add_parser(
        "allen-ophys",
        help="Allen Brain Observatory 2-photon experiment NWB -> native session",
        description="dF/F (or events) per cell during natural_movie_one/two/three, one trial per "
        "clip of each movie repeat.",
    )
    _source(o, "ophys experiment NWB file", "experiment_id", "BrainObservatoryCache")
    o.add_argument(
        "--response",
        choices=("dff", "events"),
        default="dff",
        help="dF/F traces or allensdk's extracted events (default dff)",
    )
    _flag(
        o,
        "dff_offset",
        choices=("shift", "clip", "none"),
        default="shift",
        help="make dF/F >= 0 for the Poisson loss: shift by each cell's negative minimum "
        "(saved in meta/neurons/response_offset.npy), clip at 0, or none",
    )
    o.add_argument(
        "--events",
        type=Path,
        default=None,
        help="events .npz (key 'ev'), allensdk's ophys_experiment_events/<id>_events.npz",
    )
    _common(o)
    o.set_defaults(func=run_ophys)

    e = subparsers.add_parser(
        "allen-ecephys",
        help="Allen Visual Coding Neuropixels session NWB -> native session",
        description="spike counts per unit in each displayed frame of natural_movie_one/three.",
    )
    _source(e, "session NWB file", "session_id", "EcephysProjectCache")
    e.add_argument(
        "--templates",
        nargs="+",
        default=None,
        metavar="[MOVIE=]PATH",
        help="stimulus frames when the session file has none: NAME=PATH pairs (npy "
        "natural_movie_<n>.h5 from EcephysProjectCache, or NWB/HDF5 with "
        "stimulus/templates; natural_scenes=PATH: EcephysProjectCache's natural_scene_templates "
        "folder of .tiff, an .npy (118, h, w) or an NWB file) or one PATH holding every movie",
    )
    e.add_argument(
        "--areas",
        nargs="+",
        default=None,
        help="keep units whose peak channel is in these structures (VISp VISl LGd ...)",
    )
    _flag(
        e,
        "amplitude_cutoff_maximum",
        type=float,
        default=0.1,
        help="allensdk default 0.1",
    )
    _flag(
        e,
        "presence_ratio_minimum",
        type=float,
        default=0.95,
        help="allensdk default 0.95",
    )
    _flag(
        e,
        "isi_violations_maximum",
        type=float,
        default=0.5,
        help="allensdk default 0.5",
    )
    _flag(
        e,
        "no_validity_filter",
        action="store_true",
        help="also keep units not 'good', on invalid channels, or outside the brain",
    )
    _common(e)
    e.set_defaults(func=run_ecephys)


def _flag(p: argparse._ActionsContainer, name: str, **kwargs) -> None:
    """A flag spelled both --with-dashes and --with_underscores, stored as `name`."""
    p.add_argument(f"--{name.replace('_', '-')}", f"--{name}", dest=name, **kwargs)


def _source(p: argparse.ArgumentParser, what: str, id_name: str, cache: str) -> None:
    """--nwb FILE or --<id> ID (downloaded with allensdk's `cache`): one of them."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--nwb", type=Path, help=f"{what} ({cache})")
    kind = id_name.replace("_", " ")
    _flag(src, id_name, type=int, help=f"{kind}: fetch with allensdk's {cache}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="folder to write the session into")
    p.add_argument("--name", default=None, help="session folder name (default allen-<kind>-<id>)")
    _flag(
        p,
        "cache_dir",
        type=Path,
        default=Path("data/allen_cache"),
        help="allensdk cache (with an id)",
    )
    p.add_argument(
        "--movies",
        nargs="+",
        default=None,
        choices=trials.MOVIES,
        help="movies to use (default: every natural movie in the file)",
    )
    _flag(
        p,
        "frame_size",
        nargs=2,
        type=int,
        default=(36, 64),
        metavar=("H", "W"),
        help="video size (default 36 64)",
    )
    _flag(
        p,
        "clip_length",
        type=int,
        default=300,
        help="frames per trial (each movie repeat is cut into clips; default 300)",
    )
    _flag(
        p,
        "heldout_clips",
        nargs="*",
        default=list(trials.DEFAULT_HELDOUT),
        metavar="MOVIE:CLIP",
        help="clips whose repeats form the oracle and test tiers (default natural_movie_one:0)",
    )
    _flag(
        p,
        "test_fraction",
        type=float,
        default=0.5,
        help="share of a held-out clip's (last) repeats in the test tier",
    )
    _flag(
        p,
        "test_tier",
        default="final_test_main",
        help="tier name for the held-out test repeats",
    )
    p.add_argument(
        "--stimuli",
        nargs="+",
        default=["natural_movies"],
        choices=("natural_movies", *presentations.STIMULI),
        help="what to convert: natural_movies (one trial per clip of each repeat; default) and/or "
        "natural_scenes, static_gratings, drifting_gratings (one trial per presentation, each "
        "stimulus its own session folder <name>-<stimulus>; the conditions named in "
        "--heldout-clips, e.g. natural_scenes:0-29, form the oracle/test tiers, all of them "
        "when none is named)",
    )
    p.add_argument(
        "--window",
        nargs=2,
        type=float,
        default=None,
        metavar=("START", "STOP"),
        help="presentations: seconds after onset whose responses are read (default: the "
        "presentation, 0 0.25 for scenes and static gratings, 0 2 for drifting gratings)",
    )
    p.add_argument(
        "--bin",
        type=float,
        default=None,
        help="presentations: response bin in seconds (default 1/30 for 2-photon; 0.01 for "
        "Neuropixels, mouse-vision's)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing session folder")


def _common_kwargs(args) -> dict:
    return dict(
        movies=args.movies,
        frame_size=tuple(args.frame_size),
        clip_length=args.clip_length,
        heldout_clips=args.heldout_clips,
        test_fraction=args.test_fraction,
        test_tier=args.test_tier,
        name=args.name,
        overwrite=args.overwrite,
    )


def _import_allensdk():
    try:
        import allensdk  # noqa: F401
    except ImportError:
        raise NeurotwinError(INSTALL_HINT) from None


def fetch_ophys(experiment_id: int, cache_dir: Path, events: bool) -> tuple[Path, Path | None]:
    """Download an ophys experiment NWB (and events) into allensdk's cache; their paths."""
    _import_allensdk()
    from allensdk.core.brain_observatory_cache import BrainObservatoryCache

    cache_dir.mkdir(parents=True, exist_ok=True)
    boc = BrainObservatoryCache(manifest_file=str(cache_dir / "brain_observatory_manifest.json"))
    data_set = boc.get_ophys_experiment_data(experiment_id)
    events_path = None
    if events:
        boc.get_ophys_experiment_events(experiment_id)
        events_path = Path(boc.get_cache_path(None, boc.EVENTS_DATA_KEY, experiment_id))
    return Path(data_set.nwb_file), events_path


def fetch_ecephys(session_id: int, cache_dir: Path, movies) -> tuple[Path, dict]:
    """Download a Neuropixels session NWB and the movie templates; their paths."""
    _import_allensdk()
    from allensdk.brain_observatory.ecephys.ecephys_project_cache import EcephysProjectCache

    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = EcephysProjectCache.from_warehouse(manifest=str(cache_dir / "manifest.json"))
    cache.get_session_data(session_id)
    path = Path(cache.get_cache_path(None, cache.SESSION_NWB_KEY, session_id, session_id))
    templates = {}
    for movie, number in (("natural_movie_one", 1), ("natural_movie_three", 3)):
        if movies and movie not in movies:
            continue
        cache.get_natural_movie_template(number)
        templates[movie] = Path(cache.get_cache_path(None, cache.NATURAL_MOVIE_KEY, number))
    return path, templates


def _presentation_kwargs(args, default_bin: float) -> dict:
    name = args.name
    return dict(
        frame_size=tuple(args.frame_size),
        window=args.window,
        bin_s=args.bin if args.bin is not None else default_bin,
        heldout_clips=args.heldout_clips,
        test_fraction=args.test_fraction,
        test_tier=args.test_tier,
        overwrite=args.overwrite,
        name=name,
    )


def _named(kwargs: dict, stimulus: str) -> dict:
    """One folder per stimulus: --name NAME becomes NAME-<stimulus>."""
    if kwargs.get("name"):
        kwargs = {**kwargs, "name": f"{kwargs['name']}-{stimulus}"}
    return kwargs


def run_ophys(args) -> int:
    from neurotwin.data.allen.ophys import convert_ophys, convert_ophys_presentations

    nwb_path, events = args.nwb, args.events
    if args.experiment_id is not None:
        nwb_path, fetched = fetch_ophys(
            args.experiment_id, args.cache_dir, args.response == "events"
        )
        events = events or fetched
    common = dict(response=args.response, dff_offset=args.dff_offset, events_path=events)
    for stimulus in args.stimuli:
        if stimulus == "natural_movies":
            folder = convert_ophys(nwb_path, args.out, **common, **_common_kwargs(args))
        else:
            kwargs = _named(_presentation_kwargs(args, 1.0 / 30.0), stimulus)
            folder = convert_ophys_presentations(nwb_path, args.out, stimulus, **common, **kwargs)
        log.info("wrote %s", folder)
    return 0


def _parse_templates(values) -> dict | Path | None:
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return Path(values[0])
    out = {}
    for v in values:
        movie, sep, path = v.partition("=")
        if not sep or movie not in (*trials.MOVIES, "natural_scenes"):
            raise DataFormatError(
                "--templates",
                f"expected NAME=PATH with NAME in {(*trials.MOVIES, 'natural_scenes')}, got {v!r}",
            )
        out[movie] = Path(path)
    return out


def run_ecephys(args) -> int:
    from neurotwin.data.allen.ecephys import convert_ecephys, convert_ecephys_presentations

    nwb_path, templates = args.nwb, _parse_templates(args.templates)
    if args.session_id is not None:
        nwb_path, fetched = fetch_ecephys(args.session_id, args.cache_dir, args.movies)
        templates = templates or fetched
    common = dict(
        areas=args.areas,
        amplitude_cutoff_maximum=args.amplitude_cutoff_maximum,
        presence_ratio_minimum=args.presence_ratio_minimum,
        isi_violations_maximum=args.isi_violations_maximum,
        filter_by_validity=not args.no_validity_filter,
    )
    for stimulus in args.stimuli:
        if stimulus == "natural_movies":
            folder = convert_ecephys(
                nwb_path, args.out, templates=templates, **common, **_common_kwargs(args)
            )
        else:
            scenes = templates.get("natural_scenes") if isinstance(templates, dict) else templates
            kwargs = _named(_presentation_kwargs(args, 0.01), stimulus)
            folder = convert_ecephys_presentations(
                nwb_path, args.out, stimulus, templates=scenes, **common, **kwargs
            )
        log.info("wrote %s", folder)
    return 0
