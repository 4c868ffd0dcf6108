"""One encoding run: sessions -> distinct frames -> embeddings (cached) -> fits -> tables, figures.

    result = run_encoding(EncodeSettings(...))

For each session: the analysed tiers are read, their distinct frames collected once and
embedded by every model (or read from O/embeddings/), then every layer's design is fitted and
scored per tier (`analysis.analyse`). Outputs in `output_dir`: scores.parquet, predictivity.parquet,
figures/*.png, summary.json (tables written atomically; an earlier run of another model into
the same folder is kept, so that two models can be compared).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neurotwin.config import option
from neurotwin.data.native import NativeSession
from neurotwin.encoding import figures, tables
from neurotwin.encoding.analysis import analyse
from neurotwin.encoding.embeddings import (
    EmbeddingCache,
    EmbeddingOptions,
    embed_frames,
    model_key,
    resolve_device,
)
from neurotwin.encoding.regression import RegressionOptions
from neurotwin.encoding.scores import ScoreOptions
from neurotwin.encoding.splits import SplitOptions
from neurotwin.encoding.stimuli import (
    StimulusOptions,
    design,
    frame_table,
    read_tier,
    session_paths,
)
from neurotwin.errors import ConfigError
from neurotwin.files import write_parquet, write_text
from neurotwin.models.backbones import build_backbone, options_for, parse_spec

log = logging.getLogger(__name__)


@dataclass
class EncodeOptions:
    """Which networks, and where the outputs go."""

    model: list[str] = option(
        ["pixels"], "networks, SOURCE:NAME each (torchvision, timm, hf, mouse-vision, pixels)"
    )
    weights: list[str] = option(
        ["none"], "weights per network (one value: for all): PATH | none | cache"
    )
    label: list[str] | None = option(
        None,
        "name of each network in the tables (default: SOURCE:NAME, +':random' for weights none)",
    )
    output_dir: str = option("runs/encode", "folder for the tables, figures, embeddings cache")
    per_repeat: bool = option(True, "also fit and score every repeat on its own (HuggingMouse)")

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("give at least one --model")
        if len(self.weights) not in (1, len(self.model)):
            raise ConfigError(f"{len(self.model)} models but {len(self.weights)} --weights values")
        if self.label is not None and len(self.label) != len(self.model):
            raise ConfigError(f"{len(self.model)} models but {len(self.label)} --label values")


@dataclass
class EncodeSettings:
    """Every option of a run, by the part that owns it."""

    encode: EncodeOptions = field(default_factory=EncodeOptions)
    stimuli: StimulusOptions = field(default_factory=StimulusOptions)
    backbone: dict[str, Any] = field(default_factory=dict)  # values for the sources' options
    splits: SplitOptions = field(default_factory=SplitOptions)
    regression: RegressionOptions = field(default_factory=RegressionOptions)
    scores: ScoreOptions = field(default_factory=ScoreOptions)
    embedding: EmbeddingOptions = field(default_factory=EmbeddingOptions)


@dataclass
class Network:
    spec: str
    label: str
    options: Any
    backbone: Any
    key: str


def _networks(settings: EncodeSettings, device) -> list[Network]:
    enc = settings.encode
    weights = enc.weights * len(enc.model) if len(enc.weights) == 1 else enc.weights
    out = []
    for i, (spec, w) in enumerate(zip(enc.model, weights)):
        source, _ = parse_spec(spec)
        w = "none" if source == "pixels" else w
        opts = options_for(spec, {**settings.backbone, "weights": w})
        label = (
            enc.label[i]
            if enc.label
            else spec + (":random" if w == "none" and source != "pixels" else "")
        )
        backbone = build_backbone(spec, opts)
        out.append(
            Network(spec, label, opts, backbone, model_key(spec, opts, settings.embedding, device))
        )
    labels = [n.label for n in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two networks share a label {labels}; give --label")
    return out


def _embeddings(
    net: Network, frames, cache: EmbeddingCache, settings: EncodeSettings, device, session: str
):
    paths = {
        layer: cache.path(net.label, net.key, layer, frames.key) for layer in net.backbone.layers
    }
    found = {layer: cache.load(p, len(frames.frames)) for layer, p in paths.items()}
    if all(v is not None for v in found.values()):
        log.info(
            "%s %s: embeddings from %s", session, net.label, paths[net.backbone.layers[0]].parent
        )
        return found
    start = time.time()
    computed = embed_frames(
        net.backbone, frames.frames, settings.embedding, device, f"{net.label} {session}"
    )
    log.info(
        "%s %s: embedded %d frames in %.1f s",
        session,
        net.label,
        len(frames.frames),
        time.time() - start,
    )
    dtype = settings.embedding.cache_dtype
    for layer, array in computed.items():
        info = {
            "model": net.spec,
            "label": net.label,
            "layer": layer,
            "stimuli": frames.key,
            "session": session,
            "frames": len(array),
            "options": dataclasses.asdict(net.options),
        }
        cache.save(paths[layer], array.astype(dtype), info)
        found[layer] = array.astype(dtype).astype("float32")
    return found


def run_encoding(settings: EncodeSettings) -> dict[str, Any]:
    """Run the analysis; returns {'scores', 'predictivity', 'figures', 'summary', 'table'}."""
    start = time.time()
    out = Path(settings.encode.output_dir)
    device = resolve_device(settings.embedding.device)
    networks = _networks(settings, device)
    cache = EmbeddingCache(out / "embeddings")
    stim = settings.stimuli
    parts, analysed = [], []
    for path in session_paths(stim):
        session = NativeSession(path, limit_neurons=stim.limit_neurons)
        present = [t for t in stim.tiers if t in session.tier_counts]
        for t in sorted(set(stim.tiers) - set(present)):
            log.warning("%s: no %s trials: skipped", session.name, t)
        tiers = [d for d in (read_tier(session, t, stim.targets) for t in present) if d is not None]
        if not tiers:
            continue
        frames = frame_table(tiers)
        for net in networks:
            emb = _embeddings(net, frames, cache, settings, device, session.name)
            for index, layer in enumerate(net.backbone.layers):
                for data in tiers:
                    where = f"{session.name} {data.tier} {net.label} {layer}"
                    d = design(data, emb[layer], stim.skip_frames, stim.lags)
                    results = analyse(
                        d,
                        settings.splits,
                        settings.regression,
                        settings.scores,
                        str(device),
                        settings.encode.per_repeat,
                        where,
                    )
                    parts.append(
                        tables.score_rows(
                            session.name,
                            data.unit_ids,
                            data.areas,
                            net.label,
                            layer,
                            index,
                            data.tier,
                            results,
                            settings.regression.regressor,
                            settings.splits.split,
                        )
                    )
                    log.info(
                        "%s: %d stimuli x %d features, %d neurons",
                        where,
                        *d.features.shape,
                        d.responses.shape[2],
                    )
        analysed.append(session.name)
    if not parts:
        raise ConfigError(f"{stim.data_dir}: no session has a tier {stim.tiers} with responses")
    import pandas as pd

    scores = tables.merge_scores(out / "scores.parquet", pd.concat(parts, ignore_index=True))
    table = tables.predictivity(scores)
    paths = {
        "scores": write_parquet(scores, out / "scores.parquet"),
        "predictivity": write_parquet(table, out / "predictivity.parquet"),
    }
    paths["figures"] = figures.all_figures(scores, table, out / "figures")
    summary = _summary(settings, networks, analysed, table, paths, time.time() - start)
    paths["summary"] = _write_json(out / "summary.json", summary)
    return {**paths, "table": table}


def _summary(settings, networks, sessions, table, paths, seconds) -> dict[str, Any]:
    tiers = list(dict.fromkeys(table["tier"]))
    best = {tier: tables.best_layers(table, tier) for tier in tiers}
    return {
        "sessions": sessions,
        "tiers": tiers,
        "models": [
            {
                "label": n.label,
                "spec": n.spec,
                "layers": n.backbone.layers,
                "options": dataclasses.asdict(n.options),
                "embedding_key": n.key,
            }
            for n in networks
        ],
        "best_layer": best,
        "predictivity": json.loads(table.to_json(orient="records")),
        "options": {
            "stimuli": dataclasses.asdict(settings.stimuli),
            "splits": dataclasses.asdict(settings.splits),
            "regression": dataclasses.asdict(settings.regression),
            "scores": dataclasses.asdict(settings.scores),
            "embedding": dataclasses.asdict(settings.embedding),
            "per_repeat": settings.encode.per_repeat,
        },
        "outputs": {
            k: ([str(p) for p in v] if isinstance(v, list) else str(v)) for k, v in paths.items()
        },
        "seconds": round(seconds, 1),
    }


def _write_json(path: Path, value: dict) -> Path:
    return write_text(path, json.dumps(value, indent=1, default=str))
