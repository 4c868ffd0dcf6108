"""Training pipeline on real synthetic mice: resume, micro-batches, schedule-free switching,
checkpoints, run folder, and that the model actually learns."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from neurotwin import config as cfg
from neurotwin.data import synthetic
from neurotwin.errors import CheckpointError, NeurotwinError
from neurotwin.metrics import CorrelationAccumulator, frames_to_skip
from neurotwin.registry import CORES, READOUTS
from neurotwin.training import checkpoint as ckpt
from neurotwin.training.loop import Trainer
from neurotwin.training.losses import poisson_loss
from neurotwin.training.memory import MemoryProbe
from neurotwin.training.optim import GradClipper, Plateau, grad_norm
from neurotwin.training.video import VideoTask, train


@pytest.fixture(scope="module")
def data_dir(synthetic_mice: Path) -> Path:
    """Two small synthetic mice in the native layout (conftest.synthetic_mice)."""
    return synthetic_mice


def tiny_config(data_dir: Path, output_dir: Path, **train: object) -> cfg.Config:
    c = cfg.Config()
    c.data.data_dir = str(data_dir)
    c.data.crop_frame = 24
    c.data.batch_size = 4
    c.data.num_workers = 0
    c.model.core = CORES.options(
        "conv3d",
        core_num_layers=2,
        core_hidden_dim=4,
        core_spatial_input_kernel=5,
        core_spatial_hidden_kernel=3,
        core_temporal_input_kernel=5,
        core_temporal_hidden_kernel=3,
    )
    c.model.readout = READOUTS.options("gaussian")
    c.train.epochs = 3
    c.train.lr = 0.01
    for k, v in train.items():
        setattr(c.train, k, v)
    c.run.output_dir = str(output_dir)
    c.run.device = "cpu"
    c.run.verbose = 0
    c.run.seed = 7
    return c


def make_trainer(config: cfg.Config) -> Trainer:
    """The shared loop with the video model's task, as `train` builds it (one process)."""
    return Trainer(VideoTask(config), config)


def load_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------
# Units: loss, accumulator, plateau, AutoClip
# ------------------------------------------------------------------------------------------------


def test_poisson_loss_is_safe_and_matches_torch():
    pred = torch.tensor([[0.5, 2.0, 1e-3]])
    target = torch.tensor([[1.0, 0.0, 3.0]])
    expected = torch.nn.functional.poisson_nll_loss(
        pred, target, log_input=False, full=False, reduction="sum", eps=0.0
    )
    assert torch.allclose(poisson_loss(pred, target), expected)
    # a rate of exactly 0 (e.g. ELU+1 far below) stays finite, and so does its gradient
    zero = torch.zeros(1, 3, requires_grad=True)
    loss = poisson_loss(zero, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zero.grad).all()
    # bf16 predictions are scored in float32
    assert poisson_loss(pred.bfloat16(), target).dtype == torch.float32


def test_streamed_correlation_equals_the_metric():
    from neurotwin import metrics

    rng = np.random.default_rng(0)
    trials_r = [rng.random((5, t)) for t in (70, 60, 80)]
    trials_p = [r + rng.normal(0, 0.5, r.shape) for r in trials_r]
    trials_p[1][2] = 1.0  # a neuron whose prediction does not vary in one trial
    acc = CorrelationAccumulator(5)
    for r, p in zip(trials_r, trials_p):
        acc.add(torch.tensor(r[None, :, 50:]), torch.tensor(p[None, :, 50:]))
    reference = [metrics.correlation(np.concatenate([t[n, 50:] for t in trials_r]),
                                     np.concatenate([t[n, 50:] for t in trials_p])) for n in range(5)]  # fmt: skip
    assert np.allclose(acc.result().numpy(), reference, atol=1e-10)
    const = CorrelationAccumulator(2)
    const.add(torch.rand(1, 2, 10), torch.ones(1, 2, 10))
    assert torch.equal(const.result(), torch.zeros(2))  # no variance: 0, not NaN


def test_plateau_reduces_then_stops_and_round_trips():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    plateau = Plateau(opt, patience=2, factor=0.5, max_reduce=1)
    decisions = [plateau.step(v, e + 1) for e, v in enumerate([0.1, 0.2, 0.1, 0.1, 0.1, 0.1])]
    assert decisions == ["improved", "improved", "wait", "reduced", "wait", "stop"]
    assert opt.param_groups[0]["lr"] == 0.5 and plateau.best_value == 0.2
    other = Plateau(opt, patience=2, factor=0.5, max_reduce=1)
    other.load_state_dict(plateau.state_dict())
    assert other.state_dict() == plateau.state_dict()


def test_autoclip_clips_to_the_percentile_of_past_norms():
    p = torch.nn.Parameter(torch.zeros(3))
    clip = GradClipper(percentile=50)
    for norm in (1.0, 2.0, 3.0):
        p.grad = torch.tensor([norm, 0.0, 0.0])
        assert float(clip([p])) == pytest.approx(norm)
    assert float(p.grad.norm()) == pytest.approx(2.0)  # median of 1, 2, 3
    assert GradClipper()([p]) is None  # clipping off


class ReferenceClipper:
    """GradClipper as it was: norms read back into a Python list, torch.quantile on the CPU and
    clip_grad_norm_ (a host synchronisation every step); the on-device one must match it."""

    def __init__(self, max_norm: float | None = None, percentile: float | None = None):
        self.max_norm, self.percentile, self.history = max_norm, percentile, []

    def __call__(self, params: list[torch.Tensor]) -> float:
        value = float(grad_norm(params))
        limit = self.max_norm
        if self.percentile is not None:
            if math.isfinite(value):
                self.history.append(value)
            if not self.history:
                return value
            history = torch.tensor(self.history, dtype=torch.float64)
            limit = float(torch.quantile(history, self.percentile / 100))
        torch.nn.utils.clip_grad_norm_(params, limit)
        return value


def _grads_with_norms(norms: list[float], seed: int = 0) -> list[list[torch.Tensor]]:
    """For each norm, gradients of three tensors with that global norm (inf/nan as given)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for norm in norms:
        grads = [torch.randn(shape, generator=gen) for shape in ((7,), (3, 4), (2, 2, 5))]
        total = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
        grads = [g * (norm / total) if math.isfinite(norm) else g for g in grads]
        if not math.isfinite(norm):
            grads[1][0, 0] = norm
        out.append(grads)
    return out


def _clip_both(clip, reference, grads: list[torch.Tensor]) -> None:
    """Clip copies of `grads` with both clippers; the norms and clipped gradients are equal."""
    mine = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    theirs = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for a, b, g in zip(mine, theirs, grads):
        a.grad, b.grad = g.clone(), g.clone()
    norm, expected = clip(mine), reference(theirs)
    assert isinstance(norm, torch.Tensor) and norm.dim() == 0
    assert float(norm) == expected or (math.isnan(expected) and math.isnan(float(norm)))
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, equal_nan=True)


NORMS = [float("inf"), 3.0, 0.5, 7.0, float("nan"), 2.0, 12.0, 0.1, float("inf"), 4.0, 9.0, 1.0]


@pytest.mark.parametrize("percentile", [10.0, 50.0, 100.0])
@pytest.mark.parametrize("small", [False, True], ids=["torch_quantile", "sort_fallback"])
def test_autoclip_on_device_matches_the_host_reference(monkeypatch, percentile, small):
    from neurotwin.training import optim

    if small:  # the buffer doubles several times, and the quantile takes the sort path
        monkeypatch.setattr(GradClipper, "MIN_CAPACITY", 2)
        monkeypatch.setattr(optim, "QUANTILE_MAX_SIZE", 3)
    clip, reference = GradClipper(percentile=percentile), ReferenceClipper(percentile=percentile)
    for grads in _grads_with_norms(NORMS):
        _clip_both(clip, reference, grads)
    history = clip.state_dict()["history"]
    assert history.dtype == torch.float64 and history.device.type == "cpu"
    assert history.tolist() == reference.history  # the finite norms only, in order


def test_fixed_norm_clipping_matches_clip_grad_norm():
    clip, reference = GradClipper(max_norm=2.5), ReferenceClipper(max_norm=2.5)
    for grads in _grads_with_norms([1.0, 2.5, 40.0, 0.3, 3.0]):
        _clip_both(clip, reference, grads)


def test_autoclip_state_dict_round_trip():
    first, rest = NORMS[:6], NORMS[6:]
    clip, reference = GradClipper(percentile=10), ReferenceClipper(percentile=10)
    for grads in _grads_with_norms(first):
        _clip_both(clip, reference, grads)
    state = clip.state_dict()
    # a checkpoint of an older run (the history saved from a Python list) loads the same way
    old_format = {"history": torch.tensor(reference.history, dtype=torch.float64)}
    assert torch.equal(state["history"], old_format["history"])
    for saved in (state, old_format):
        resumed, ref = GradClipper(percentile=10), ReferenceClipper(percentile=10)
        resumed.load_state_dict(saved)
        ref.history = list(reference.history)
        for grads in _grads_with_norms(rest, seed=1):
            _clip_both(resumed, ref, grads)
        assert resumed.state_dict()["history"].tolist() == ref.history


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------


def test_checkpoint_write_interrupted_midway_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    ckpt.save_checkpoint(path, {"model": {"w": torch.ones(3)}, "epoch": 1, "config": {}})

    real_save = torch.save

    def interrupted(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # half the bytes are on disk ...
        raise KeyboardInterrupt  # ... when the process is stopped

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "epoch": 2, "config": {}})
    monkeypatch.setattr(torch, "save", real_save)

    state = ckpt.load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no partial file


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        ckpt.load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip():
    state = ckpt.get_rng_state()
    a = (torch.rand(2), np.random.rand(2), __import__("random").random())
    ckpt.set_rng_state(state)
    b = (torch.rand(2), np.random.rand(2), __import__("random").random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


# ------------------------------------------------------------------------------------------------
# The run folder, resume, micro-batches, schedule-free
# ------------------------------------------------------------------------------------------------


def test_run_folder_contents(data_dir, tmp_path):
    config = tiny_config(data_dir, tmp_path / "run", epochs=2)
    result = train(config)
    run = tmp_path / "run"
    assert result["epochs"] == 2
    # the resolved config reloads exactly
    assert cfg.load_yaml(run / "config.yaml") == config
    # checkpoints: weights only, the contract's keys, no numpy inside
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        assert {"model", "optimizer", "scheduler", "epoch", "rng", "config", "sessions"} <= set(
            state
        )
        assert {"best_value", "version"} <= set(state)
        assert cfg.from_dict(state["config"]) == config
        for spec in state["sessions"].values():
            assert len(spec["unit_ids"]) == spec["n_neurons"] == 20
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["epoch"] == 2
    rows = load_rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    sessions = sorted(state["sessions"])
    for column in ["train_loss", "val_loss", "val_correlation", "lr", "seconds", "trials_per_s"]:
        assert column in rows[0]
    for s in sessions:
        assert f"val_correlation/{s}" in rows[0]
    assert float(rows[0]["trials_per_s"]) > 0
    log = (run / "train.log").read_text()
    assert "outputs go to" in log and "parameters" in log.lower() or "params" in log
    # a second run into the same folder refuses to overwrite it
    from neurotwin.errors import ConfigError

    with pytest.raises(ConfigError, match="already holds a run"):
        train(config)


@pytest.mark.parametrize("schedule_free", [False, True], ids=["adamw", "schedule_free"])
def test_killed_run_resumed_equals_uninterrupted(data_dir, tmp_path, schedule_free):
    kw = dict(epochs=3, schedule_free=schedule_free, lr_patience=1 + schedule_free)
    kw["autoclip_percentile"] = 50.0
    full = train(tiny_config(data_dir, tmp_path / "full", **kw))

    class Killed(Exception):
        pass

    def kill_after_two(epoch, trainer):
        if epoch == 2:
            raise Killed

    killed_config = tiny_config(data_dir, tmp_path / "killed", **kw)
    with pytest.raises(Killed):
        train(killed_config, on_epoch_end=kill_after_two)
    assert torch.load(tmp_path / "killed/checkpoints/last.pt", weights_only=True)["epoch"] == 2

    killed_config.run.restore = str(tmp_path / "killed")
    resumed = train(killed_config)
    assert resumed["epochs"] == full["epochs"]

    a = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed/checkpoints/last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["scheduler"]["plateau"] == b["scheduler"]["plateau"]
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    rows_a, rows_b = load_rows(tmp_path / "full"), load_rows(tmp_path / "killed")
    assert len(rows_a) == len(rows_b) == full["epochs"]
    for ra, rb in zip(rows_a, rows_b):
        for col in ("train_loss", "val_loss", "val_correlation", "lr"):
            assert ra[col] == rb[col], (col, ra, rb)


def test_micro_batches_give_the_full_batch_gradient(data_dir, tmp_path):
    config = tiny_config(data_dir, tmp_path / "run", micro_batch_size=2)
    config.data.batch_size = 5
    trainer = make_trainer(config)
    assert trainer.micro_batch_size == 2
    trainer.model.eval()  # deterministic readout sampling, batch norm on running statistics
    trainer.model.double()  # float64, so that only the summation order differs
    session = trainer.task.session_names[0]
    batch = {
        k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in next(iter(trainer.task.train_loaders[session])).items()
    }
    assert batch["video"].shape[0] == 5

    def gradients(micro: int) -> dict[str, torch.Tensor]:
        trainer.micro_batch_size = micro
        trainer.model.zero_grad(set_to_none=True)
        trainer.train_step(session, batch)
        return {
            n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None
        }

    full, micro = gradients(5), gradients(2)  # 2 + 2 + 1
    assert full.keys() == micro.keys() and any("core" in n for n in full)
    for name in full:
        assert torch.allclose(full[name], micro[name], rtol=1e-10, atol=1e-12), name
    assert any(g.abs().sum() > 0 for n, g in full.items() if "core" in n)
    trainer.logger.close()


READ_BACKS = ("item", "__float__", "__int__", "__bool__", "tolist")


@pytest.mark.parametrize("clip", [{"autoclip_percentile": 10.0}, {"grad_norm": 1.0}])
def test_training_steps_read_nothing_back_from_the_device(data_dir, tmp_path, monkeypatch, clip):
    """A host read-back (`.item()`, `float(t)`, ...) of a CUDA tensor waits for the GPU; CI has
    none, so every read-back raises here during training steps (micro-batches, AutoClip or a
    fixed norm, the optimiser step). Only torch's AdamW may read its step counter, which it keeps
    on the CPU by design (not a GPU synchronisation)."""
    config = tiny_config(data_dir, tmp_path / "run", micro_batch_size=2, **clip)
    trainer = make_trainer(config)
    session = trainer.task.session_names[0]
    batches = list(trainer.task.train_loaders[session])[:3]
    real = {name: getattr(torch.Tensor, name) for name in READ_BACKS}

    def forbidden(name: str):
        def read_back(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name} in a training step: a GPU synchronisation")

        return read_back

    optimizer_step = trainer.optimizer.step

    def step_reading_its_cpu_counter(*args, **kwargs):
        with monkeypatch.context() as m:
            for name, fn in real.items():
                m.setattr(torch.Tensor, name, fn)
            return optimizer_step(*args, **kwargs)

    trainer.optimizer.step = step_reading_its_cpu_counter
    results = []
    with monkeypatch.context() as m:
        for name in READ_BACKS:
            m.setattr(torch.Tensor, name, forbidden(name))
        for batch in batches:
            step = trainer.train_step(session, batch)
            results.append((step.value, step.count, trainer.optimizer_step()))
    for loss, elements, norm in results:
        assert loss.dtype == torch.float64 and loss.dim() == 0 and math.isfinite(float(loss))
        assert elements > 0 and norm.dim() == 0 and math.isfinite(float(norm))
    trainer.logger.close()


def test_micro_batch_search_on_cpu_uses_the_full_batch(data_dir, tmp_path):
    config = tiny_config(data_dir, tmp_path / "run", micro_batch_size=0)
    trainer = make_trainer(config)
    assert trainer.micro_batch_size == config.data.batch_size
    assert "CUDA only" in (tmp_path / "run" / "train.log").read_text()
    trainer.logger.close()


def test_schedule_free_switches_to_eval_for_validation_and_checkpoints(data_dir, tmp_path):
    config = tiny_config(data_dir, tmp_path / "run", epochs=2, schedule_free=True)
    trainer = make_trainer(config)
    seen: list[tuple[str, bool, dict]] = []
    validate, save = trainer.validate, trainer.save

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def spy_validate():
        seen.append(("validate", trainer.optimizer.param_groups[0]["train_mode"], snapshot()))
        return validate()

    def spy_save(best: bool):
        seen.append(("save", trainer.optimizer.param_groups[0]["train_mode"], snapshot()))
        return save(best)

    trainer.validate, trainer.save = spy_validate, spy_save
    after: list[tuple[bool, dict]] = []
    trainer.fit(lambda e, t: after.append((t.optimizer.param_groups[0]["train_mode"], snapshot())))
    assert [s[:2] for s in seen] == [("validate", False), ("save", False)] * 2
    assert [a[0] for a in after] == [True, True]  # back to training after each epoch
    saved = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["model"]
    evaluated = seen[-1][2]
    for k, v in saved.items():
        assert torch.equal(v, evaluated[k]), k
    # the training point y differs from the averaged weights x that were evaluated and saved
    train_weights = after[-1][1]
    assert any(
        not torch.equal(train_weights[k], evaluated[k])
        for k in evaluated
        if k.startswith("core.") and evaluated[k].is_floating_point()
    )
    # the run ends with the evaluated weights of its best epoch (restore_best), as best.pt
    assert trainer.optimizer.param_groups[0]["train_mode"] is False
    best = torch.load(tmp_path / "run/checkpoints/best.pt", weights_only=True)["model"]
    for k, v in snapshot().items():
        assert torch.equal(v, best[k]), k


def test_bf16_autocast_on_cpu_when_enabled(data_dir, tmp_path):
    config = tiny_config(data_dir, tmp_path / "run", epochs=1, autocast="enable")
    result = train(config)
    assert math.isfinite(result["history"][0]["train_loss"])
    assert "bf16 autocast on" in (tmp_path / "run/train.log").read_text()


def test_restore_with_other_sessions_is_refused(data_dir, tmp_path):
    config = tiny_config(data_dir, tmp_path / "run", epochs=1)
    train(config)
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    name = next(iter(state["sessions"]))
    state["sessions"][name]["n_neurons"] = 99
    torch.save(state, tmp_path / "run/checkpoints/last.pt")
    config.run.restore = str(tmp_path / "run")
    config.train.epochs = 2
    with pytest.raises(CheckpointError, match="99 neurons"):
        train(config)


# ------------------------------------------------------------------------------------------------
# It learns: the demo's model on synthetic mice, a short run
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def validation_correlation(trainer: Trainer, blank_video: bool = False) -> float:
    """Mean single-trial correlation on the validation tier (the first frames left out by the
    metrics' rule), optionally with a grey video."""
    model = trainer.model.eval()
    values = []
    for session, loader in trainer.task.val_loaders.items():
        acc = CorrelationAccumulator(int(trainer.task.specs[session]["n_neurons"]))
        skip = frames_to_skip(loader.dataset.lengths)
        for batch in loader:
            video = torch.zeros_like(batch["video"]) if blank_video else batch["video"]
            pred = model(video, session, batch["behavior"], batch["pupil_center"])
            assert pred.shape == batch["response"].shape  # this core predicts every frame
            acc.add(batch["response"][..., skip:], pred[..., skip:])
        values.append(float(acc.result().mean()))
    return float(np.mean(values))


def test_demo_model_learns_from_the_stimulus(tmp_path):
    """A short run of configs/demo.yaml's model (8 epochs, one small synthetic mouse at the
    preset's resolution) must predict held-out oracle trials above chance, and the prediction
    must come from the movie: with a grey movie (behaviour and gaze kept) the correlation
    collapses to what the behaviour gain alone explains. Measured on CPU (branch quality, the
    same model): 0.44-0.47 over seeds 1-3, grey movie 0.19-0.20; a model that ignores the
    movie, a loss of the wrong sign or misaligned data fails one of the checks. (The full
    demo, 20 epochs on three mice, reaches two thirds of the ceiling: bench/RESULTS.md "Fit
    quality".)"""
    data = tmp_path / "data"
    synthetic.generate(
        data,
        mice=1,
        preset="small",
        seed=4,
        neurons=40,
        train_trials=40,
        oracle_clips=3,
        oracle_repeats=2,
        test_clips=1,
        test_repeats=2,
        frames=60,
        progress=False,
    )
    config = cfg.load_yaml(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    config.data.data_dir = str(data)
    config.data.generate_synthetic = False
    config.train.epochs = 8
    config.run.output_dir = str(tmp_path / "run")
    config.run.verbose = 0
    config.run.seed = 1
    trainer = make_trainer(config)
    result = trainer.fit()
    best = result["best_value"]
    assert best > 0.3, result["history"]
    trainer.model.load_state_dict(
        torch.load(tmp_path / "run/checkpoints/best.pt", weights_only=True)["model"]
    )
    trained = validation_correlation(trainer)
    assert trained == pytest.approx(best, abs=1e-6)
    grey = validation_correlation(trainer, blank_video=True)
    print(f"demo model: {trained:.3f}, grey movie {grey:.3f}")
    assert grey < trained - 0.15


def test_vivit_with_the_gpu_run_flags_in_miniature(data_dir, tmp_path):
    """The lead's GPU run uses viv1t.yaml with --autocast enable --grad_checkpointing 1 (and
    --compile): the same path on CPU with a tiny ViViT core and the schedule-free optimiser."""
    config = tiny_config(
        data_dir,
        tmp_path / "run",
        epochs=2,
        schedule_free=True,
        warmup_steps=2,
        autocast="enable",
        grad_checkpointing=1,
        autoclip_percentile=10.0,
    )
    config.model.core = CORES.options(
        "vivit",
        core_emb_dim=16,
        core_num_heads=2,
        core_head_dim=8,
        core_ff_dim=16,
        core_spatial_depth=1,
        core_temporal_depth=1,
        core_spatial_patch_size=3,
        core_spatial_patch_stride=2,
        core_temporal_patch_size=3,
        core_reg_tokens=2,
    )
    result = train(config)
    assert result["epochs"] == 2 and all(math.isfinite(h["train_loss"]) for h in result["history"])
    log = (tmp_path / "run/train.log").read_text()
    assert "bf16 autocast on" in log and "grad checkpointing on" in log
    assert "schedule-free" in log


@pytest.mark.parametrize(("mode", "compiled"), [("auto", False), (False, False), (True, True)])
def test_compile_auto_stays_off_on_the_cpu(data_dir, tmp_path, mode, compiled):
    """compile: auto (the GPU preset's) compiles on CUDA only; on the CPU the core stays eager."""
    trainer = make_trainer(tiny_config(data_dir, tmp_path / "run", compile=mode))
    assert trainer.compiled is compiled
    assert (trainer.model.core._compiled_call_impl is not None) is compiled


# ------------------------------------------------------------------------------------------------
# grad_checkpointing auto: the fastest setting that fits (the GPU search, with simulated OOM)
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def oom_trainer(data_dir, tmp_path, monkeypatch):
    """A CPU trainer with grad_checkpointing auto made to behave as on a GPU where a forward+
    backward of more than `fits[checkpointing]` trials runs out of memory."""
    trainer = make_trainer(tiny_config(data_dir, tmp_path / "run", grad_checkpointing="auto"))
    assert not trainer.grad_checkpointing and not trainer.checkpointing.auto  # CPU: off
    trainer.checkpointing.auto = True  # as on CUDA
    fits = {False: 0, True: 4}
    calls = []

    def forward_backward(session, batch, batch_size, sync):
        size = batch["video"].shape[0]
        calls.append((size, trainer.grad_checkpointing))
        if size > fits[trainer.grad_checkpointing]:
            raise torch.cuda.OutOfMemoryError("simulated")

    monkeypatch.setattr(trainer, "_forward_backward", forward_backward)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    return trainer, fits, calls


def probe(trainer: Trainer) -> MemoryProbe:
    """The memory probe as the loop makes it for --micro_batch_size 0 (on CUDA)."""
    return MemoryProbe(trainer._fits, trainer.checkpointing)


def test_auto_checkpointing_switches_on_only_when_one_trial_does_not_fit(oom_trainer):
    trainer, fits, calls = oom_trainer
    p = probe(trainer)
    assert p.largest(4) == 4
    assert trainer.grad_checkpointing and trainer.model.core.grad_checkpointing
    # halving without checkpointing down to one trial, then the full batch with it
    assert calls == [(4, False), (2, False), (1, False), (4, True)]
    assert any("grad_checkpointing auto: one trial does not fit" in n for n in p.notes)


def test_auto_checkpointing_prefers_a_smaller_micro_batch_to_checkpointing(oom_trainer):
    trainer, fits, calls = oom_trainer
    fits[False] = 2
    assert probe(trainer).largest(4) == 2
    assert not trainer.grad_checkpointing and not trainer.model.core.grad_checkpointing


def test_without_auto_the_search_says_what_to_try(oom_trainer):
    trainer, fits, calls = oom_trainer
    trainer.checkpointing.auto = False
    with pytest.raises(NeurotwinError, match="--grad_checkpointing 1"):
        probe(trainer).largest(4)
    assert not trainer.grad_checkpointing


def test_auto_checkpointing_with_a_fixed_micro_batch_probes_it_once(oom_trainer):
    trainer, fits, calls = oom_trainer
    trainer.config.train.micro_batch_size = 2
    assert trainer._micro_batch_size() == 2
    assert calls == [(2, False)] and trainer.grad_checkpointing
    calls.clear()
    fits[False] = 2
    trainer.checkpointing.set(False)
    assert trainer._micro_batch_size() == 2
    assert calls == [(2, False)] and not trainer.grad_checkpointing
