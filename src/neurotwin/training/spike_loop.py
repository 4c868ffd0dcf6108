"""A thin training loop for `SpikeTask`, on the shared pieces: checkpoints (atomic, resumable),
`RunLogger` (console, train.log, progress bars, metrics.csv, wandb), `Plateau` (LR reduction and
early stopping on validation bits/spike), `GradClipper`, and the epoch seeding of the video
trainer. It stays this small so that the task can move onto the shared loop as it is.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from neurotwin import config as cfg
from neurotwin.errors import ConfigError
from neurotwin.run import CHECKPOINT_DIR, CONFIG_FILE
from neurotwin.training.checkpoint import (
    get_rng_state,
    load_checkpoint,
    remove_stale_temporaries,
    resolve_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from neurotwin.training.logging import RunLogger
from neurotwin.training.loop import epoch_seed, seed_everything
from neurotwin.training.optim import GradClipper, Plateau, current_lr
from neurotwin.training.spike_task import SpikeConfig, SpikeTask

VERSION = 1
KIND = "spikes"


def _epoch_adamw(task: SpikeTask, epoch: int, clipper: GradClipper, logger: RunLogger) -> dict:
    sums: dict[str, torch.Tensor] = {}
    n_batches = 0
    batches = task.data.batches("train", epoch=epoch, seed=task.config.run.seed)
    total = task.data.n_batches("train")
    for batch in logger.progress(batches, total=total, desc=f"epoch {epoch} train"):
        task.optimizer.zero_grad(set_to_none=True)
        loss, stats = task.training_step(batch)
        loss.backward()
        clipper([p for g in task.optimizer.param_groups for p in g["params"]])
        task.optimizer.step()
        for k, v in {"loss": loss.detach(), **stats}.items():
            sums[k] = sums.get(k, 0) + v
        n_batches += 1
    return {k: float(v) / max(n_batches, 1) for k, v in sums.items()}


def _epoch_lbfgs(task: SpikeTask, epoch: int, logger: RunLogger) -> dict:
    """L-BFGS iterations on the full training objective (gradients accumulated over batches)."""
    n_batches = max(task.data.n_batches("train"), 1)
    parts: dict[str, float] = {}

    def closure() -> torch.Tensor:
        task.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=task.device, dtype=task.dtype)
        parts.clear()
        for batch in task.data.batches("train"):
            loss, stats = task.training_step(batch)
            (loss / n_batches).backward()
            total = total + loss.detach() / n_batches
            for k, v in stats.items():
                parts[k] = parts.get(k, 0.0) + float(v) / n_batches
        parts["loss"] = float(total)
        return total

    task.optimizer.step(closure)
    logger.print(f"epoch {epoch}: {task.config.train.lbfgs_iterations} L-BFGS iterations", 2)
    return dict(parts)


def _prepare_output_dir(config: SpikeConfig, resume: bool) -> Path:
    out = Path(config.run.output_dir)
    if config.run.clear_output_dir and out.exists() and not resume:
        shutil.rmtree(out)
    if not resume and (out / CHECKPOINT_DIR / "last.pt").is_file():
        raise ConfigError(
            f"run.output_dir: {out} already holds a run; resume it with --restore {out}, or "
            "start over with --clear_output_dir true"
        )
    return out


def checkpoint_state(task: SpikeTask, plateau: Plateau) -> dict[str, Any]:
    state = task.state_dict()
    state.update(
        scheduler={"plateau": plateau.state_dict()},
        rng=get_rng_state(),
        config=cfg.to_dict(task.config),
        best_value=plateau.best_value,
        version=VERSION,
        kind=KIND,
    )
    return state


def fit(config: SpikeConfig, task: SpikeTask | None = None) -> dict[str, Any]:
    """Train (or resume) a spike model; checkpoints in output_dir/checkpoints. Returns a
    summary with the task (its model holds the best weights at the end)."""
    restore = None
    if config.run.restore:
        path = resolve_checkpoint(config.run.restore, "last")
        restore = load_checkpoint(path)
        restore["_path"] = str(path)
    out = _prepare_output_dir(config, resume=restore is not None)
    seed_everything(config.run.seed)
    task = task or SpikeTask(config)
    t = config.train
    plateau = Plateau(task.optimizer, t.patience, t.lr_factor, t.max_reduce, t.min_epochs)
    clipper = GradClipper(t.grad_norm)
    best_state = None
    if restore is not None:
        task.load_state_dict(restore, restore["_path"])
        plateau.load_state_dict(restore["scheduler"]["plateau"])
        set_rng_state(restore["rng"])
        best_file = Path(restore["_path"]).with_name("best.pt")
        if best_file.is_file():
            best_state = load_checkpoint(best_file)["model"]
    ckpt_dir = out / CHECKPOINT_DIR
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(ckpt_dir)
    logger = RunLogger(
        out,
        verbose=config.run.verbose,
        wandb_group=config.run.wandb,
        wandb_mode=config.run.wandb_mode,
        config=cfg.to_dict(config),
        resume_epoch=task.epoch if restore is not None else None,
    )
    cfg.save_yaml(config, out / CONFIG_FILE)
    n_params = sum(p.numel() for p in task.model.parameters())
    logger.print(
        f"spike model {config.model.name}: {n_params:,} parameters on {task.device}; "
        f"{task.data.n_trials('train')} training trials in {len(task.data.names)} session(s)"
    )
    stopped, start = "max epochs", time.time()
    try:
        while task.epoch < t.epochs and not plateau.stopped:
            epoch = task.epoch + 1
            seed_everything(epoch_seed(config.run.seed, epoch))
            task.set_epoch(epoch)
            tic = time.time()
            task.model.train()
            if t.optimizer == "lbfgs":
                result = _epoch_lbfgs(task, epoch, logger)
            else:
                result = _epoch_adamw(task, epoch, clipper, logger)
            train_seconds = time.time() - tic
            val = task.validate()
            decision = plateau.step(val["bits_per_spike"], epoch)
            if decision == "improved":
                best_state = copy.deepcopy(task.state_dict()["model"])
            elif decision == "reduced" and best_state is not None:
                task.model.load_state_dict(best_state)
            state = checkpoint_state(task, plateau)
            if decision == "improved":
                save_checkpoint(ckpt_dir / "best.pt", state)
            save_checkpoint(ckpt_dir / "last.pt", state)
            row = {
                "epoch": epoch,
                **{f"train_{k}": v for k, v in result.items()},
                "beta": task.beta,
                "val_bits_per_spike": val["bits_per_spike"],
                **{f"val_{k}": v for k, v in val.items() if "/" in k},
                "lr": current_lr(task.optimizer),
                "seconds": time.time() - tic,
                "trials_per_s": task.data.n_trials("train") / max(train_seconds, 1e-9),
            }
            logger.log_metrics(row, step=epoch)
            mark = {"improved": " *", "reduced": " (lr reduced)", "stop": " (stop)"}
            logger.print(
                f"epoch {epoch:3d}/{t.epochs}  train loss {result.get('loss', math.nan):.4f}  "
                f"val {val['bits_per_spike']:.4f} bits/spike  {row['seconds']:.1f}s"
                f"{mark.get(decision, '')}"
            )
            if not math.isfinite(result.get("loss", math.nan)):
                stopped = "non-finite training loss"
                break
            if decision == "stop":
                stopped = "early stopping"
    except BaseException:
        logger.close(exit_code=1)
        raise
    use_best = best_state is not None and t.restore_best
    if use_best:
        task.model.load_state_dict(best_state)
    logger.print(
        f"done ({stopped}) after {task.epoch} epochs in {time.time() - start:.1f}s: best "
        f"validation {plateau.best_value:.4f} bits/spike at epoch {plateau.best_epoch}; "
        f"checkpoints in {ckpt_dir}"
    )
    logger.close()
    return {
        "output_dir": str(out),
        "epochs": task.epoch,
        "best_epoch": plateau.best_epoch,
        "weights_epoch": plateau.best_epoch if use_best else task.epoch,
        "best_value": plateau.best_value,
        "stopped": stopped,
        "task": task,
    }
