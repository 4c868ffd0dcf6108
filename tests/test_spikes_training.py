"""The spike family on the shared loop: resume is bit-identical (AdamW with sampled latents, and
full-batch L-BFGS), the run ends with the best or the last weights (`restore_best`), and
micro-batches give the full batch's gradient."""

from __future__ import annotations

import pytest
import torch

from neurotwin.config import from_dict
from neurotwin.training.checkpoint import load_checkpoint
from neurotwin.training.loop import Trainer
from neurotwin.training.spikes import SpikeConfig, SpikeTask, fit

pytestmark = pytest.mark.usefixtures("one_thread")

VAE = {"name": "glm_vae", "glm": {"stimulus_basis": 6}, "vae": {"latent_dim": 1, "d_model": 16, "ff_dim": 32}}  # fmt: skip
GLM = {"name": "glm", "glm": {"stimulus_basis": 6}}


@pytest.fixture
def data_dir(spike_sessions):
    return spike_sessions


def config(data_dir, out, model, restore=None, **train) -> SpikeConfig:
    return from_dict(
        {
            "data": {"data_dir": str(data_dir), "batch_size": 16, "history_ms": 70},
            "model": model,
            "train": {"lr": 0.05, **train},
            "run": {"output_dir": str(out), "device": "cpu", "verbose": 0, "restore": restore},
        },
        cls=SpikeConfig,
    )


def weights(task: SpikeTask) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.model.state_dict().items()}


@pytest.mark.parametrize(
    "model,train",
    [(VAE, {}), (GLM, {"optimizer": "lbfgs", "lbfgs_iterations": 4})],
    ids=["adamw-vae", "lbfgs-glm"],
)
def test_resume_is_bit_identical(data_dir, tmp_path, model, train):
    whole = fit(config(data_dir, tmp_path / "a", model, epochs=3, restore_best=False, **train))
    fit(config(data_dir, tmp_path / "b", model, epochs=2, restore_best=False, **train))
    resumed = fit(
        config(
            data_dir, tmp_path / "b", model, tmp_path / "b", epochs=3, restore_best=False, **train
        )  # fmt: skip
    )
    assert resumed["epochs"] == 3 and resumed["weights_epoch"] == 3
    a, b = weights(whole["task"]), weights(resumed["task"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_the_run_ends_with_the_best_or_the_last_weights(data_dir, tmp_path):
    for restore_best, which in ((True, "best"), (False, "last")):
        out = tmp_path / which
        result = fit(
            config(data_dir, out, GLM, epochs=4, lr_patience=10, restore_best=restore_best)
        )
        saved = load_checkpoint(out / "checkpoints" / f"{which}.pt")
        assert result["weights_epoch"] == saved["epoch"]
        assert result["best_epoch"] < 4  # on these data: best and last differ
        got = weights(result["task"])
        for k, v in saved["model"].items():
            assert torch.equal(got[k], v), (which, k)
    assert (tmp_path / "last" / "metrics.csv").read_text().splitlines()[0].count("train_kl") == 1


def test_micro_batches_give_the_full_batch_gradient(data_dir, tmp_path):
    model = {**VAE, "vae": {**VAE["vae"], "sample_latent": False}}
    c = config(data_dir, tmp_path / "run", model, epochs=1, precision="float64")
    trainer = Trainer(SpikeTask(c), c)
    group, batch = next(iter(trainer.task.batches(1)))
    assert trainer.task.count(batch) == 16

    def gradients(micro: int) -> dict[str, torch.Tensor]:
        trainer.micro_batch_size = micro
        trainer.model.zero_grad(set_to_none=True)
        step = trainer.train_step(group, batch)
        assert step.count == 16
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}  # fmt: skip

    full, micro = gradients(16), gradients(5)  # 5 + 5 + 5 + 1
    assert full.keys() == micro.keys() and any("latent" in n for n in full)
    for name in full:
        assert torch.allclose(full[name], micro[name], rtol=1e-9, atol=1e-12), name
    trainer.logger.close()
