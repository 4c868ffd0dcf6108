"""Trainer options any model can use: the warm-up + cosine LR schedule and the EMA of the weights
(unit maths against torch's own schedulers and the EMA formula; on the loop: validation and
checkpoints see the averaged weights, a killed run resumes bit-identically, the cosine schedule
runs every epoch)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from neurotwin import config as cfg
from neurotwin.errors import ConfigError
from neurotwin.registry import CORES, READOUTS
from neurotwin.training.ema import WeightEMA
from neurotwin.training.loop import Trainer
from neurotwin.training.optim import WarmupCosine
from neurotwin.training.video import VideoTask, train

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(data_dir: Path, output_dir: Path, **train_options: object) -> cfg.Config:
    c = cfg.Config()
    c.data.data_dir, c.data.crop_frame, c.data.batch_size, c.data.num_workers = (
        str(data_dir),
        24,
        4,
        0,
    )
    c.model.core = CORES.options(
        "conv3d", core_num_layers=1, core_hidden_dim=4, core_spatial_input_kernel=5,
        core_temporal_input_kernel=5,
    )  # fmt: skip
    c.model.readout = READOUTS.options("gaussian")
    c.train.epochs, c.train.lr = 3, 0.01
    for k, v in train_options.items():
        setattr(c.train, k, v)
    c.run.output_dir, c.run.device, c.run.verbose, c.run.seed = str(output_dir), "cpu", 0, 7
    return c


# ------------------------------------------------------------------------------------------------
# units
# ------------------------------------------------------------------------------------------------


def test_warmup_cosine_equals_torch_lambda_then_cosine_annealing():
    """DwiseNeuro's schedule: LambdaLR(x / W) for W steps, then CosineAnnealingLR(T_max = S - W,
    eta_min = ratio x lr), both stepped per iteration; two groups with their own base LRs."""
    w, s, ratio = 5, 23, 0.01
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    ours_opt = torch.optim.SGD([{"params": params[:1], "lr": 0.5}, {"params": params[1:], "lr": 2.0}])  # fmt: skip
    schedule = WarmupCosine(ours_opt, [0.5, 2.0], w, s, ratio)
    ours = []
    for _ in range(s):
        schedule.apply()
        ours.append([g["lr"] for g in ours_opt.param_groups])
        schedule.advance()
    ref_lrs = []
    for base in (0.5, 2.0):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
        warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda x: x / w)
        lrs = []
        for _ in range(w):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            warm.step()
        opt.param_groups[0]["lr"] = base  # the train stage starts from the base LR
        opt.param_groups[0]["initial_lr"] = base
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, s - w, eta_min=ratio * base)
        for _ in range(s - w):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            cosine.step()
        ref_lrs.append(lrs)
    for k in range(s):
        assert ours[k] == pytest.approx([ref_lrs[0][k], ref_lrs[1][k]], rel=1e-9, abs=1e-12), k
    assert ours[0] == [0.0, 0.0] and ours[w] == [0.5, 2.0]
    other = WarmupCosine(ours_opt, [0.5, 2.0], w, s, ratio)
    other.load_state_dict(schedule.state_dict())
    assert other.step_count == s


def test_weight_ema_follows_the_formula_and_swaps_back():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = WeightEMA(model, decay=0.9)
    expected = {k: v.clone().double() for k, v in start.items() if v.is_floating_point()}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(5, 3))  # batch-norm statistics move too
        ema.update(model)
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                expected[k] = 0.9 * expected[k] + 0.1 * v.double()
    for k, v in expected.items():
        assert torch.allclose(ema.average[k].double(), v, atol=1e-6), k
    assert ema.average["1.num_batches_tracked"] == 3  # integers are copied
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    ema.swap(model)
    assert all(torch.allclose(model.state_dict()[k].double(), expected[k]) for k in expected)
    assert torch.equal(ema.training_weights(model)["0.weight"], trained["0.weight"])
    ema.swap(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(model, 1.0)


@pytest.mark.parametrize(
    "options,flag",
    [
        ({"lr_schedule": "cosine", "schedule_free": True}, "--lr_schedule"),
        ({"ema_decay": 0.99, "schedule_free": True}, "--ema_decay"),
        ({"warmup_epochs": 2}, "--warmup_epochs"),  # warm-up belongs to the cosine schedule
        ({"lr_schedule": "cosine", "warmup_epochs": 3, "epochs": 3}, "--warmup_epochs"),
        ({"ema_decay": 1.5}, "--ema_decay"),
        ({"min_lr_ratio": -0.1}, "--min_lr_ratio"),
    ],
)
def test_schedule_options_are_checked(options, flag):
    with pytest.raises(ConfigError, match=flag):
        cfg.TrainConfig(**options)


# ------------------------------------------------------------------------------------------------
# on the loop
# ------------------------------------------------------------------------------------------------


def test_ema_weights_are_validated_and_saved(synthetic_mice, tmp_path):
    config = tiny_config(synthetic_mice, tmp_path / "run", epochs=2, ema_decay=0.5)
    trainer = Trainer(VideoTask(config), config)
    seen = []
    validate = trainer.validate

    def spy_validate():
        seen.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        return validate()

    trainer.validate = spy_validate
    trainer.fit()
    saved = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    for k, v in saved["model"].items():  # last.pt holds what was validated: the average
        assert torch.equal(v, seen[-1][k]), k
    trained = saved["ema"]["training_weights"]
    assert saved["ema"]["updates"] == trainer.ema.updates > 0
    held = trainer.ema.training_weights(trainer.model)
    for k, v in held.items():  # the model trained on its own weights, kept beside the average
        assert torch.equal(v, trained[k]), k
    # the run ends with the checkpointed weights in the model: the best epoch's average
    best = torch.load(tmp_path / "run/checkpoints/best.pt", weights_only=True)["model"]
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, best[k]), k
    assert any(
        not torch.equal(trained[k], saved["model"][k])
        for k in trained
        if trained[k].is_floating_point()
    )
    assert "EMA of the weights (decay 0.5)" in (tmp_path / "run/train.log").read_text()


def test_killed_run_with_ema_and_cosine_resumes_exactly(synthetic_mice, tmp_path):
    kw = dict(epochs=3, lr_schedule="cosine", warmup_epochs=1, ema_decay=0.7)
    full = train(tiny_config(synthetic_mice, tmp_path / "full", **kw))

    class Killed(Exception):
        pass

    def kill_after_two(epoch, trainer):
        if epoch == 2:
            raise Killed

    killed = tiny_config(synthetic_mice, tmp_path / "killed", **kw)
    with pytest.raises(Killed):
        train(killed, on_epoch_end=kill_after_two)
    killed.run.restore = str(tmp_path / "killed")
    assert train(killed)["epochs"] == full["epochs"] == 3
    a = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed/checkpoints/last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]["training_weights"]:
        assert torch.equal(a["ema"]["training_weights"][k], b["ema"]["training_weights"][k]), k
    assert a["ema"]["updates"] == b["ema"]["updates"]
    assert a["scheduler"]["cosine"] == b["scheduler"]["cosine"]
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]


def test_cosine_schedule_runs_every_epoch_down_to_its_floor(synthetic_mice, tmp_path):
    # patience 1 would stop a plateau run early; the cosine schedule runs all its epochs
    config = tiny_config(
        synthetic_mice, tmp_path / "run", epochs=4, lr_schedule="cosine", warmup_epochs=1,
        lr_patience=1, min_lr_ratio=0.1,
    )  # fmt: skip
    result = train(config)
    assert result["epochs"] == 4 and result["stopped"] == "max epochs"
    with open(tmp_path / "run/metrics.csv", newline="") as f:
        lrs = [float(row["lr"]) for row in csv.DictReader(f)]
    steps_per_epoch = 3  # 12 training trials / batch 4 per session; one step per 2 batches
    total = 4 * steps_per_epoch
    # the LR of the epoch's last step: warm-up ends after epoch 1, then cosine
    expected = [
        0.01 * (steps_per_epoch - 1) / steps_per_epoch,
        *(
            0.01 * (0.1 + 0.9 * (1 + math.cos(math.pi * (k - 3) / (total - 3))) / 2)
            for k in (5, 8, 11)
        ),
    ]
    assert lrs == pytest.approx(expected, rel=1e-5)  # metrics.csv rounds
