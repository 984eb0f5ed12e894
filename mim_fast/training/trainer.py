"""The training loop: two masked views per batch, masked-negatives loss + InfoNCE, AdamW with
linear warmup and cosine decay, gradient clipping, a NaN/Inf guard, metrics, checkpoints.

Work directory layout::

    <work_dir>/config.json           the resolved configuration
    <work_dir>/metrics.jsonl          one JSON object per step (deterministic values only)
    <work_dir>/timing.jsonl           per-step times and throughput (vary between runs)
    <work_dir>/checkpoints/step_N.pt  model, optimizer, scheduler, RNG states, data position
    <work_dir>/data/                  synthetic H5 data of the smoke run

Checkpoints are written to a temporary file and renamed, so a checkpoint on disk is always
complete; re-running with the same work directory resumes from the latest one. SIGTERM (and
Ctrl-C) finish the current step, write a checkpoint and exit cleanly.
"""

import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

from .. import losses
from ..data.dataset import PretrainBatches
from ..experiments import build_model
from .config import RunConfig


def lr_at(step: int, config) -> float:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then cosine to ``final_lr_fraction * lr``."""
    t = config.trainer
    if step < t.warmup_steps:
        return t.lr * step / max(t.warmup_steps, 1)
    progress = min(1.0, (step - t.warmup_steps) / max(t.max_steps - t.warmup_steps, 1))
    low = t.lr * t.final_lr_fraction
    return low + (t.lr - low) * 0.5 * (1 + math.cos(math.pi * progress))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _split(batch, size: int):
    """Microbatches of ``size`` samples (every field sliced along dim 0)."""
    total = batch.batch_size
    for start in range(0, total, size):
        yield batch.replace(**{k: v[start : start + size] for k, v in batch.as_dict().items()})


class Checkpoints:
    """Atomic checkpoint files ``step_N.pt`` in ``<work_dir>/checkpoints``."""

    def __init__(self, work_dir: str):
        self.dir = os.path.join(work_dir, "checkpoints")
        os.makedirs(self.dir, exist_ok=True)

    def paths(self) -> list[str]:
        """Checkpoint files, newest first."""
        steps = []
        for name in os.listdir(self.dir):
            if name.startswith("step_") and name.endswith(".pt"):
                try:
                    steps.append(int(name[5:-3]))
                except ValueError:
                    continue
        return [os.path.join(self.dir, f"step_{s}.pt") for s in sorted(steps, reverse=True)]

    def latest(self) -> str | None:
        paths = self.paths()
        return paths[0] if paths else None

    def save(self, step: int, payload: dict) -> str:
        path = os.path.join(self.dir, f"step_{step}.pt")
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before it gets its final name
        os.replace(tmp, path)
        directory = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
        return path

    @staticmethod
    def load(path: str) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)


def _all_reduce_mean(grads, world_size: int) -> None:
    """Average gradients over ranks with one all-reduce of a flat buffer."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size
    for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(reduced)


class Trainer:
    """Runs one experiment configuration in a work directory (see the module docstring)."""

    def __init__(self, config: RunConfig, work_dir: str, data_dir: str, rank: int = 0, world_size: int = 1,
                 progress: bool = True, log=print):  # fmt: skip
        self.config = config
        self.work_dir = work_dir
        self.rank, self.world_size = rank, world_size
        self.progress = progress and rank == 0
        self.log = log
        os.makedirs(work_dir, exist_ok=True)
        if config.launch.parallelism not in ("ddp", "fsdp"):
            raise ValueError(
                f"launch.parallelism: expected 'ddp' (parameters replicated, gradients averaged with one "
                f"all-reduce per step) or 'fsdp' (FSDP2 fully_shard), got {config.launch.parallelism!r}"
            )
        self.fsdp = config.launch.parallelism == "fsdp" and world_size > 1
        if min(config.trainer.ema_decay) < 1.0 and config.model.projection_only_target:
            raise ValueError(
                "trainer.ema_decay: an EMA target (decay < 1) needs model.projection_only_target=false "
                "(a full target encoder to update)"
            )
        t = config.trainer
        if t.device == "auto":
            self.device = torch.device("cuda", rank % max(torch.cuda.device_count(), 1)) if torch.cuda.is_available() else torch.device("cpu")
        else:
            self.device = torch.device(t.device)
        _seed_all(t.init_seed)
        m = config.model
        self.model = build_model(
            config.experiment, m.size, drop_path=m.drop_path, band_dropout_rate=m.band_dropout_rate,
            projection_only_target=m.projection_only_target, random_band_dropout=m.random_band_dropout,
            modalities=m.modalities, tokenization=config.tokenization,
        ).to(self.device)  # fmt: skip
        if world_size > 1:  # identical initial weights on every rank
            import torch.distributed as dist

            for tensor in self.model.state_dict().values():
                dist.broadcast(tensor, src=0)
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

            for block in [*self.model.encoder.blocks, *self.model.decoder.blocks]:
                fully_shard(block)
            fully_shard(self.model)
            # The trainer calls training_loss, not forward: unshard the root's parameters for it too.
            register_fsdp_forward_method(self.model, "training_loss")
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay,
            fused=self.device.type == "cuda",
        )  # fmt: skip
        # Update k (1-based) uses lr_at(k): the first update already has a non-zero rate.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_at(s + 1, config) / t.lr)
        self.patch_loss = losses.build(config.loss)
        self.contrastive = losses.build(config.contrastive)
        dl = config.data_loader
        if dl.global_batch_size % world_size:
            raise ValueError(f"data_loader.global_batch_size: {dl.global_batch_size} is not divisible by {world_size} ranks")
        self.batches = PretrainBatches(
            data_dir, config.model.modalities, config.masking, config.tokenization, dl.global_batch_size // world_size,
            dl.token_budget, dl.sampled_hw_p_list, dl.min_patch_size, dl.max_patch_size, dl.seed,
            dl.budget_with_tokenization, epoch=1, rank=rank, world_size=world_size,
        )  # fmt: skip
        self.checkpoints = Checkpoints(work_dir)
        self.step = 0
        self.skipped = 0
        self._stop = False

    # -- state ---------------------------------------------------------------------------

    def _model_and_optimizer_state(self):
        if not self.fsdp:
            return self.model.state_dict(), self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        # Full (unsharded) tensors gathered on every rank: a collective, so every rank calls it.
        return get_state_dict(self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def state(self) -> dict:
        model_state, optimizer_state = self._model_and_optimizer_state()
        return {
            "step": self.step,
            "skipped": self.skipped,
            "model": model_state,
            "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
            "data_position": self.step,
            "config": self.config.to_json(),
        }

    def resume(self) -> bool:
        payload = path = None
        for candidate in self.checkpoints.paths():
            try:
                payload, path = Checkpoints.load(candidate), candidate
                break
            except Exception as err:  # a damaged file (e.g. cut short by a crash): try the previous one
                self.log(f"skipping unreadable checkpoint {candidate}: {err}")
        if payload is None:
            return False
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            set_state_dict(self.model, self.optimizer, model_state_dict=payload["model"],
                           optim_state_dict=payload["optimizer"], options=StateDictOptions(full_state_dict=True))  # fmt: skip
        else:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        _set_rng_state(payload["rng"])
        self.step, self.skipped = int(payload["step"]), int(payload["skipped"])
        self.log(f"resumed from {path} (step {self.step})")
        return True

    def save(self) -> None:
        payload = self.state() if (self.rank == 0 or self.fsdp) else None
        if self.rank == 0:
            self.checkpoints.save(self.step, payload)

    # -- one step ------------------------------------------------------------------------

    def _views_loss(self, patch, view_a, view_b):
        """Loss of one microbatch: (patch loss a + b) / 2 + InfoNCE(pooled a, pooled b)."""
        model = self.model
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
                    and self.config.trainer.autocast_bf16 else nullcontext())  # fmt: skip
        with autocast:
            a = model.training_loss(view_a, patch, self.patch_loss)
            b = model.training_loss(view_b, patch, self.patch_loss)
        with torch.autocast(self.device.type, enabled=False):
            contrastive = self.contrastive.compute(a.pooled.float(), b.pooled.float())
            total = (a.loss.float() + b.loss.float()) / 2 + contrastive
        tokens = torch.stack([a.encoded + b.encoded, a.decoded + b.decoded, a.targeted + b.targeted])
        return total, a.loss.detach(), b.loss.detach(), contrastive.detach(), tokens

    def ema_decay(self) -> float:
        """Target EMA decay at the current step: linear from ``ema_decay[0]`` to ``ema_decay[1]``."""
        start, end = self.config.trainer.ema_decay
        return start + self.step * (end - start) / max(self.config.trainer.max_steps, 1)

    def train_step(self, patch, view_a, view_b) -> dict:
        t = self.config.trainer
        decay = self.ema_decay()
        if decay < 1.0:  # (1, 1), the study's setting, never updates the target
            _unwrap(self.model).update_target(decay)
        self.optimizer.zero_grad(set_to_none=True)
        size = self.config.data_loader.microbatch_size
        parts = list(zip(_split(view_a, size), _split(view_b, size)))
        sums = torch.zeros(5, device=self.device)
        tokens = torch.zeros(3, dtype=torch.long, device=self.device)
        for a, b in parts:
            a, b = a.to(self.device, non_blocking=True), b.to(self.device, non_blocking=True)
            total, la, lb, lc, tok = self._views_loss(patch, a, b)
            (total / len(parts)).backward()
            sums += torch.stack([total.detach(), la, lb, lc, torch.ones((), device=self.device)]) / len(parts)
            tokens += tok
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.world_size > 1 and not self.fsdp:  # FSDP2 reduce-scatters the gradients itself
            _all_reduce_mean([p.grad for p in params], self.world_size)
        norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        finite = torch.isfinite(sums[0]) & torch.isfinite(norm)
        # NaN/Inf guard: a non-finite step is skipped (parameters and optimizer state untouched).
        if self.device.type == "cuda":
            # Fused AdamW reads found_inf on the device and skips the update itself: no host read.
            self.optimizer.found_inf = (~finite).float()
            self.optimizer.grad_scale = None
            self.optimizer.step()
        elif bool(finite):  # on CPU reading the flag costs nothing
            self.optimizer.step()
        self.scheduler.step()
        return {"sums": sums, "norm": norm, "finite": finite, "tokens": tokens}

    # -- the loop --------------------------------------------------------------------------

    def _batches(self):
        """Rank batches from the current data position on, made (and masked) in DataLoader workers.

        One loader per epoch segment: the epoch's order is fixed before the workers start,
        and a resumed run starts at the batch after the last one trained.
        """
        dl = self.config.data_loader
        while True:
            epoch, first = divmod(self.step, len(self.batches))
            self.batches.set_epoch(epoch + 1)
            workers = dl.num_workers
            loader = torch.utils.data.DataLoader(
                self.batches, batch_size=None, sampler=range(first, len(self.batches)), num_workers=workers,
                pin_memory=self.device.type == "cuda" and workers > 0,
                prefetch_factor=dl.prefetch_factor if workers > 0 else None,
                multiprocessing_context="spawn" if workers > 0 else None,
                worker_init_fn=_ignore_stop_signals if workers > 0 else None,
                # Its own generator: creating a loader must not consume the training RNG, or a
                # resumed run (which creates one mid-epoch) would diverge from an uninterrupted one.
                generator=torch.Generator().manual_seed(dl.seed + epoch),
            )  # fmt: skip
            yield from loader

    def _handle_signals(self):
        def stop(signum, frame):
            self._stop = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def fit(self) -> dict:
        """Train to ``trainer.max_steps`` (resuming if a checkpoint exists); returns the last metrics."""
        t = self.config.trainer
        if self.rank == 0:
            with open(os.path.join(self.work_dir, "config.json"), "w") as f:
                f.write(self.config.to_json())
        self.resume()
        self._handle_signals()
        metrics_path = os.path.join(self.work_dir, "metrics.jsonl")
        timing_path = os.path.join(self.work_dir, "timing.jsonl")
        if self.rank == 0:
            _truncate_after(metrics_path, self.step)
            _truncate_after(timing_path, self.step)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=t.max_steps, initial=self.step, desc=self.config.experiment[:40], unit="step", file=sys.stderr)
        wandb_run = _wandb(self.config, self.work_dir) if self.rank == 0 else None
        last = {}
        stream = self._batches()
        # Ranks stop on the flag they agreed on in the last step's all-reduce (a signal can reach
        # one rank between two steps); a single process stops on its own flag.
        self._agreed_stop = False
        while self.step < t.max_steps and not self._agreed_stop:
            start = time.perf_counter()
            patch, view_a, view_b = next(stream)
            loaded = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step's update uses
            out = self.train_step(patch, view_a, view_b)
            self.step += 1
            if self.world_size > 1:  # metrics averaged over ranks (token counts summed)
                import torch.distributed as dist

                dist.all_reduce(out["sums"])
                out["sums"] /= self.world_size
                # The stop request travels with the token counts, so every rank stops at the same step.
                counts = torch.cat([out["tokens"], out["tokens"].new_tensor([int(self._stop)])])
                dist.all_reduce(counts)
                out["tokens"], self._agreed_stop = counts[:3], bool(counts[3] > 0)
            else:
                self._agreed_stop = self._stop
            sums = out["sums"].tolist()  # the one host read per step, for the metrics
            finite = bool(out["finite"])
            self.skipped += 0 if finite else 1
            elapsed = time.perf_counter() - start
            tokens = out["tokens"].tolist()
            last = {
                "step": self.step, "loss": sums[0], "loss_view_a": sums[1], "loss_view_b": sums[2], "InfoNCE": sums[3],
                "grad_norm": float(out["norm"]), "lr": lr, "patch_size": patch, "skipped_steps": self.skipped,
                "tokens_encoded": tokens[0], "tokens_decoded": tokens[1], "tokens_targeted": tokens[2],
            }  # fmt: skip
            timing = {
                "step": self.step, "step_time_s": elapsed, "data_loading_fraction": (loaded - start) / elapsed,
                "tokens_per_s_encoded": tokens[0] / elapsed, "tokens_per_s_decoded": tokens[1] / elapsed,
                "tokens_per_s_targeted": tokens[2] / elapsed,
            }  # fmt: skip
            if self.rank == 0:
                _append(metrics_path, last)
                _append(timing_path, timing)
                if wandb_run is not None:
                    wandb_run.log({**last, **timing}, step=self.step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sums[0]:.4f}", lr=f"{lr:.2e}")
            if self.step % t.save_interval == 0 or self.step == t.max_steps:
                self.save()
        if self._agreed_stop and self.step < t.max_steps:
            self.save()
            self.log(f"stopped at step {self.step}; checkpoint written, re-run to resume")
        if bar is not None:
            bar.close()
        if wandb_run is not None:
            wandb_run.finish()
        return last


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM to the trainer, which checkpoints and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _unwrap(model):
    return getattr(model, "module", model)


def _append(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _truncate_after(path: str, step: int) -> None:
    """Drop metric lines of steps after ``step`` (written after the checkpoint a run resumes from)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
    lines = kept
    with open(f"{path}.tmp", "w") as f:
        f.writelines(lines)
    os.replace(f"{path}.tmp", path)


def _wandb(config: RunConfig, work_dir: str):
    """A wandb run (offline unless mode is online and a key is set), or None without wandb."""
    cfg = config.trainer.callbacks.wandb
    if not cfg.enabled:
        return None
    try:
        import wandb
    except ImportError:
        return None
    mode = cfg.mode
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        mode = "offline"
    run_id_path = os.path.join(work_dir, "wandb_runid.txt")
    run_id = open(run_id_path).read().strip() if os.path.exists(run_id_path) else None
    run = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or config.experiment, dir=work_dir,
                     mode=mode, id=run_id, resume="allow", config=config.to_dict())  # fmt: skip
    with open(run_id_path, "w") as f:
        f.write(run.id)
    return run
