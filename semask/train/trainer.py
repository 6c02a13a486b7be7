"""The bundled trainer: iteration-based SeMask-FPN training with AMP, gradient accumulation, clipping, DDP through
`torchrun`, atomic checkpoints with exact resume, periodic mIoU evaluation, tqdm / JSON-lines / PNG feedback.

    trainer = Trainer(config)            # or Trainer(config, model=my_model, train_set=..., val_set=...)
    trainer.fit()                        # resumes from config.out_dir/checkpoints when config.resume == "auto"

Launch on N GPUs (or N CPU processes with gloo) with `torchrun --nproc_per_node N -m semask.cli train ...`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader

from ..data import (
    ResumableSampler,
    SegmentationDataset,
    ShardSampler,
    TransformedDataset,
    build_dataset,
    collate,
    default_splits,
    train_transforms,
)
from ..devices import resolve_device
from ..hub import HIDDEN_FIELDS, state_dict_differences
from ..infer import aug_test, input_resize
from .checkpoint import (
    atomic_save,
    list_checkpoints,
    load_checkpoint,
    prune,
    rng_state,
    set_rng_state,
)
from .config import DataConfig, TrainConfig, validate_config
from .evaluate import EvalProtocol, evaluate
from .losses import SeMaskLoss
from .mask_losses import MaskClassificationLoss
from .metrics import format_table
from .optim import PolyWarmup, build_optimizer, family_rule, reschedule
from .plots import plot_curves

_log = logging.getLogger(__name__)
AMP_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
NO_RESUME = (None, "", "no", "none", False)  # config.resume values that start a fresh run
# PolyWarmup attribute -> the config key that sets it (resume messages name what the user can change)
_SCHEDULE_KEYS = {"total_iters": "iters", "power": "poly_power", "warmup_iters": "warmup_iters",
                  "warmup_ratio": "warmup_ratio", "lr": "lr"}


def init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; initialises the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if world > 1:
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def config_protocol(c: TrainConfig, *, mode: str | None = None, crop: int | tuple[int, int] | None = None,
                    stride: int | tuple[int, int] | None = None, tta: bool | None = None) -> EvalProtocol:
    """The config's evaluation protocol (`eval_mode`, `eval_crop`, `eval_stride`, `eval_tta`), each keyword that
    is not None overriding its key (`semask eval`'s flags), so that eval scores as training's evaluations did."""
    return EvalProtocol(mode=mode or c.eval_mode, crop=c.eval_crop if crop is None else crop,
                        stride=c.eval_stride if stride is None else stride,
                        **aug_test(c.eval_tta if tta is None else tta))


def _check_data_root(d: DataConfig) -> None:
    """`data.root` set and an existing folder (before the dataset, whose error would name a file below it)."""
    if not d.root:
        raise ValueError("data.root is not set (pass data.root=FOLDER, the dataset's folder)")
    if not Path(d.root).is_dir():
        where = "" if Path(d.root).is_absolute() else f" (relative to {Path.cwd()})"
        raise FileNotFoundError(f"data.root {d.root!r} does not exist{where}")


def _criterion(model: nn.Module, c: TrainConfig) -> tuple[nn.Module, bool]:
    """The training loss for the model's decoder, and whether it wants outputs at the input resolution.

    Per-pixel decoders (FPN, SegFormer) get `SeMaskLoss` on their stride-4 maps (it resizes chunk by chunk); mask
    classification decoders (MaskFormer / Mask2Former / FaPN) get the set criterion with deep supervision and the
    prior loss, as the detectron2 originals train them.
    """
    config = getattr(model, "config", None)
    if config is not None and config.mask_classification:
        return MaskClassificationLoss.from_config(config, prior_weight=c.prior_loss_weight), True
    return SeMaskLoss(prior_weight=c.prior_loss_weight, reduction=c.loss_reduction,
                      ohem_min_kept=c.ohem_min_kept), False


class Trainer:
    def __init__(self, config: TrainConfig, *, model: nn.Module | None = None,
                 train_set: SegmentationDataset | None = None, val_set: SegmentationDataset | None = None,
                 callbacks: Sequence[Callable[[Trainer, dict], None]] = (), progress: bool = True,
                 eval_protocol: EvalProtocol | None = None) -> None:
        """`eval_protocol`: how the periodic evaluation predicts (whole / slide, scales, flip); default: the
        config's `eval_mode`, `eval_crop`, `eval_stride`, `eval_tta`."""
        self.cfg = c = config
        validate_config(c)  # also a config built in Python (files are checked when read)
        self.rank, self.world, local_rank = init_distributed()
        self.device = resolve_device(c.device, local_rank=local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if c.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp='fp16' needs CUDA; use amp='bf16' on the CPU")
        self.amp_dtype = AMP_DTYPES[c.amp]
        self.out_dir = Path(c.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.callbacks = list(callbacks)
        self.progress = progress and self.rank == 0
        self.eval_protocol = eval_protocol or config_protocol(c)
        torch.manual_seed(c.seed)  # model init is the same on every process (DDP also broadcasts it)

        d = c.data
        if train_set is None:
            _check_data_root(d)
        train_split, val_split = default_splits(d.type, d.root, d.train_split, d.val_split)
        self.train_set = train_set if train_set is not None else build_dataset(d.type, d.root, train_split,
                                                                               **self._dataset_kwargs())
        if val_set is None and val_split is not None:
            val_set = build_dataset(d.type, d.root, val_split, **self._dataset_kwargs())
        self.val_set = val_set
        if val_set is None and self.rank == 0:
            _log.warning("no validation data (data.val_split is not set): training without evaluation, and no "
                         "best.pt is written; set data.val_split=... to evaluate every eval_interval iterations")
        self._verify_data()
        self.model = model if model is not None else self._build_model()
        num_classes = getattr(getattr(self.model, "config", None), "num_classes", self.train_set.num_classes)
        if num_classes != self.train_set.num_classes:
            raise ValueError(f"the model predicts {num_classes} classes but {self.train_set.name} has "
                             f"{self.train_set.num_classes} ({list(self.train_set.classes)[:8]}...); build the model "
                             f"with num_classes={self.train_set.num_classes}, re-head it with "
                             f"model.reset_classifier({self.train_set.num_classes}), or fix the class list")
        self.num_classes = num_classes
        if c.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if self.world > 1 and self.device.type == "cuda" and c.sync_bn:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device)
        self.module = self.model  # the unwrapped model (checkpoints, evaluation)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        # parameter groups as the model family's original code forms them (mmseg name keys / detectron2 types)
        self.optimizer = build_optimizer(self.module, lr=c.lr, weight_decay=c.weight_decay, betas=tuple(c.betas),
                                         rule=family_rule(self.module), backbone_lr_mult=c.backbone_lr_mult,
                                         head_lr_mult=c.head_lr_mult)
        if self.rank == 0:
            _warn_recipe(c, self.module)
        # what build_scheduler builds, from the one config -> PolyWarmup mapping (a resume re-applies it)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._schedule())
        self.scaler = torch.amp.GradScaler("cuda", enabled=c.amp == "fp16")
        self.criterion, self.full_res_outputs = _criterion(self.module, c)
        self.train_view = TransformedDataset(self.train_set, train_transforms(
            crop_size=d.crop_size, scale=d.scale, ratios=d.ratios, ratio_range=d.ratio_range,
            cat_max_ratio=d.cat_max_ratio, flip=d.flip, photometric=d.photometric, mean=d.mean, std=d.std,
            resize=input_resize(self.module)))  # the family's original image resize, as inference uses
        self.sampler = ResumableSampler(self.train_view, num_replicas=self.world, rank=self.rank, seed=c.seed)
        self.batches_per_epoch = len(self.sampler) // c.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{self.train_set.name} has {len(self.train_set)} images, fewer than batch_size "
                             f"{c.batch_size} × {self.world} process(es)")
        self.iteration = 0
        self.best_miou = float("-inf")
        self.records: list[dict] = []
        self.last_eval: dict = {}  # {"iter", "metrics"} of the run's latest evaluation (kept in checkpoints)
        self._stop = False
        self._resume()

    # ---- construction helpers ----
    def _dataset_kwargs(self) -> dict:
        d = self.cfg.data
        return {"classes": d.classes, "reduce_zero_label": d.reduce_zero_label} if d.type == "folder" else {}

    def _verify_data(self) -> None:
        """Every training and validation mask checked before the first iteration (values, size against its image's
        header, format), each process its shard: a bad file fails now, naming all of them, not at the first
        evaluation (8000 iterations in) or whenever it is first sampled."""
        start, messages, checked = time.perf_counter(), [], 0
        for role, dataset in (("training", self.train_set), ("validation", self.val_set)):
            if not isinstance(dataset, SegmentationDataset):  # a custom dataset class: its own loader checks
                continue
            shard = ShardSampler(len(dataset), num_replicas=self.world, rank=self.rank).indices
            problems = dataset.pair_problems(shard)  # masks, and only the images' headers: cheap
            if self.world > 1:
                gathered: list[dict] = [{}] * self.world
                dist.all_gather_object(gathered, problems)
                problems = {i: p for part in gathered for i, p in part.items()}
            checked += len(dataset)
            if problems:
                messages.append(f"{role} data, {dataset.describe_problems(problems)}")
        if messages:
            raise ValueError("bad data (nothing was trained):\n" + "\n".join(messages) +
                             "\nfix or remove these files (or fix the class list) and start again")
        if self.rank == 0:
            _log.info("checked %d image/mask pairs in %.1f s", checked, time.perf_counter() - start)

    def _build_model(self) -> nn.Module:
        from ..registry import create_model

        c = self.cfg
        return create_model(c.model, pretrained=c.pretrained or False, pretrained_backbone=c.pretrained_backbone,
                            num_classes=self.train_set.num_classes, **c.model_overrides)

    def _schedule(self) -> PolyWarmup:
        """The config's lr factor per iteration (poly decay after a linear warmup)."""
        c = self.cfg
        return PolyWarmup(c.iters, power=c.poly_power, warmup_iters=c.warmup_iters, warmup_ratio=c.warmup_ratio)

    # ---- checkpoints ----
    def state_dict(self) -> dict:
        rng = [rng_state()]
        if self.world > 1:
            rng = [None] * self.world
            dist.all_gather_object(rng, rng_state())
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "iteration": self.iteration, "best_miou": self.best_miou, "rng": rng, "world_size": self.world,
                "config": json.loads(json.dumps(self.cfg.to_dict(), default=list)), "records": self.records,
                "last_eval": self.last_eval, "classes": list(self.train_set.classes),
                "model_config": self.module.config.to_dict()}  # the fields no tensor shows, for eval and resume

    def save_checkpoint(self, *, best: bool = False) -> Path | None:
        state = self.state_dict()  # collective: every process takes part
        if self.rank != 0:
            return None
        path = atomic_save(state, self.ckpt_dir / ("best.pt" if best else f"iter_{self.iteration:07d}.pt"))
        if not best:
            prune(self.ckpt_dir, self.cfg.keep_last)
        return path

    def load_state_dict(self, ckpt: dict) -> None:
        self.module.load_state_dict(ckpt["model"])
        mults = [group["lr_mult"] for group in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as err:  # another number or size of parameter groups
            raise ValueError(f"the checkpoint's optimizer has other parameter groups than this run's ({err}): "
                             "backbone_lr_mult / head_lr_mult changed since it was written, or an older semask "
                             "grouped a mask-classification model's parameters as mmseg does; resume with its "
                             "settings and version, or start a new out_dir from its weights (pretrained=...)") from err
        saved = [group.get("lr_mult", 1.0) for group in self.optimizer.param_groups]  # a checkpoint before: none
        for group, mult in zip(self.optimizer.param_groups, mults, strict=True):
            group["lr_mult"] = mult  # the config's multipliers win, as its lr
        if saved != mults and self.rank == 0:
            _log.info("resuming with the config's lr multipliers: %s -> %s (per parameter group)", saved, mults)
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self._follow_config_schedule(saved[0])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        elif self.scaler.is_enabled():  # a run without fp16 saved a disabled scaler's empty state
            _log.info("the checkpoint has no fp16 loss scale (it ran without amp=fp16): starting from a fresh one")
        self.iteration = int(ckpt["iteration"])
        self.best_miou = float(ckpt["best_miou"])
        self.records = [r for r in ckpt.get("records", []) if r["iter"] <= self.iteration]
        last = ckpt.get("last_eval") or {}  # absent from checkpoints written before it was kept
        self.last_eval = last if last.get("iter", self.iteration + 1) <= self.iteration else {}
        rngs = ckpt["rng"]
        if len(rngs) == self.world:
            set_rng_state(rngs[self.rank])
        else:
            _log.warning("checkpoint from %d process(es), resuming on %d: RNG streams (dropout, drop path) differ",
                         len(rngs), self.world)

    def _follow_config_schedule(self, saved_mult: float) -> None:
        """After the scheduler's state is restored: its iteration, the current config's schedule and lr (mmseg's
        resume), so `iters=` can be raised to train longer. A changed lr is a warning (the config's wins).
        `saved_mult`: the checkpoint's lr multiplier of the first parameter group."""
        changed = reschedule(self.scheduler, self._schedule(), self.cfg.lr, saved_mult=saved_mult)
        if self.rank != 0 or not changed:
            return
        if "lr" in changed:
            old, new = changed.pop("lr")
            _log.warning("the checkpoint was trained with lr=%g but the config says lr=%g: continuing with the "
                         "config's lr=%g (set lr=%g to keep the checkpoint's)", old, new, new, old)
        if changed:
            _log.info("resuming with the config's schedule: %s", ", ".join(
                f"{_SCHEDULE_KEYS.get(k, k)} {old} -> {new}" for k, (old, new) in changed.items()))

    def _resume(self) -> None:
        resume = self.cfg.resume
        found = list_checkpoints(self.ckpt_dir)
        if resume in NO_RESUME:
            if found:  # a fresh run beside them: keep_last would prune the new run's checkpoints, auto would resume old
                raise ValueError(self._earlier_run_message(*found[-1]))
            return self._start_log()
        if resume == "auto":
            if not found:
                return self._start_log()
            resume = found[-1][1]
        ckpt = load_checkpoint(resume)
        self._check_same_model(ckpt, Path(resume))
        self._check_no_newer(int(ckpt["iteration"]), Path(resume), found)
        self.load_state_dict(ckpt)
        if self.rank == 0:
            self._rewrite_log()
            _log.info("resumed from %s at iteration %d", resume, self.iteration)

    def _earlier_run_message(self, iteration: int, path: Path) -> str:
        return (f"{self.ckpt_dir} holds checkpoints of an earlier run (the latest: {path.name}, iteration "
                f"{iteration}) but resume={self.cfg.resume or 'null'} starts a fresh run, whose checkpoints would be "
                f"mixed with (and pruned among) those: set resume=auto to continue that run, or start afresh in "
                f"another out_dir (or delete {self.ckpt_dir})")

    def _check_no_newer(self, iteration: int, path: Path, found: list[tuple[int, Path]]) -> None:
        """An explicit resume=PATH behind the newest checkpoint of out_dir: the resumed run would write iter_*.pt
        files among (and over) the newer ones, keep_last would prune them and a later resume=auto would pick
        whichever is newest, so the two runs would mix. Refused; nothing is deleted."""
        newer = [p for i, p in found if i > iteration and p.resolve() != path.resolve()]
        if newer:
            names = ", ".join(p.name for p in newer[:3]) + (f" and {len(newer) - 3} more" if len(newer) > 3 else "")
            raise ValueError(f"resume={path} continues from iteration {iteration}, but {self.ckpt_dir} holds newer "
                             f"checkpoints ({names}) that the resumed run would overwrite and prune among its own: "
                             f"set resume=auto to continue from the newest ({newer[-1].name}), or move the newer "
                             f"files out of {self.ckpt_dir} to restart from iteration {iteration}")

    def _check_same_model(self, ckpt: dict, path: Path) -> None:
        """Refuse a checkpoint of another architecture, class count or tensor shapes (an out_dir trained with
        another model or dataset), naming both, instead of load_state_dict's hundreds of "Unexpected key(s)" lines."""
        mismatch = _checkpoint_mismatch(ckpt, self.module, self.cfg, self.train_set, builds="this run builds")
        if mismatch is None:
            return
        other, why = mismatch
        if other == "dataset":
            raise ValueError(f"checkpoint {path} is for another dataset: {why}. Restore that class list to resume, "
                             f"or train in another out_dir (pretrained={self.out_dir / 'final'} starts from the "
                             "earlier run's final weights)")
        raise ValueError(f"checkpoint {path} is for another model: {why}. Train this model in another out_dir, or "
                         f"move {path.parent} away and start afresh with resume=null")

    # ---- logging ----
    def _start_log(self) -> None:
        """A fresh run: its log starts empty (records were appended to an earlier run's); the earlier log is kept
        as log.previous.jsonl."""
        log = self.out_dir / "log.jsonl"
        if self.rank == 0 and log.is_file():
            os.replace(log, self.out_dir / "log.previous.jsonl")
            _log.warning("%s: a fresh run (no checkpoint to resume); the earlier log is now log.previous.jsonl",
                         self.out_dir)

    def _rewrite_log(self) -> None:
        """After a resume the log holds exactly the records up to the resumed iteration (none from the lost tail)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        tmp = self.out_dir / ".log.jsonl.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.out_dir / "log.jsonl")

    def _record(self, rec: dict) -> None:
        self.records.append(rec)
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")

    # ---- training ----
    def request_stop(self) -> None:
        """Stop after the current iteration and save a checkpoint (what Ctrl-C does)."""
        self._stop = True

    @property
    def stopped(self) -> bool:
        """Whether `fit()` was stopped (Ctrl-C, `request_stop`): the run is incomplete and out_dir/final was not
        written; the same command resumes it."""
        return self._stop

    def _loader(self, epoch: int, start_batch: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        self.sampler.start = start_batch * self.cfg.batch_size
        # A private generator: creating a loader must not consume the global torch RNG (exact resume).
        return DataLoader(self.train_view, batch_size=self.cfg.batch_size, sampler=self.sampler, drop_last=True,
                          num_workers=self.cfg.data.num_workers, collate_fn=collate,
                          generator=torch.Generator().manual_seed(self.cfg.seed + epoch),
                          pin_memory=self.device.type == "cuda")

    def _set_train_mode(self) -> None:
        self.model.train()
        if self.cfg.norm_eval:
            for m in self.module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _forward_backward(self, batch: dict, sync: bool) -> dict[str, float]:
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        ctx = self.model.no_sync() if (self.world > 1 and not sync) else contextlib.nullcontext()
        with ctx:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = self.model(images, upsample=self.full_res_outputs)
            out = _float32(out)
            losses = self.criterion(out, labels)
            self.scaler.scale(losses["loss"] / self.cfg.accum_steps).backward()
        return {k: float(v.detach()) for k, v in losses.items()}

    def _optimizer_step(self) -> None:
        if self.cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def _mean_over_processes(self, values: dict[str, float]) -> dict[str, float]:
        if self.world == 1:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist(), strict=True)}

    def _should_stop(self) -> bool:
        if self.world == 1:
            return self._stop
        flag = torch.tensor([float(self._stop)], device=self.device)
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def fit(self) -> dict:
        """Train to `config.iters` (or until stopped). Returns the run's latest evaluation (`evaluate()`'s dict:
        this call's, or after a resume the checkpoint's), {} if there was none (no validation data, or stopped before
        the first). A run already at `iters` trains nothing: it says so and returns its last evaluation (evaluating
        once if the checkpoint holds none)."""
        if self.iteration >= self.cfg.iters:
            return self._already_complete()
        if self._eval_pending():  # resumed from a checkpoint saved before its evaluation, which did not finish
            self._after_eval(self.evaluate())
        self._train()
        if self.rank == 0:
            if not self._stop:
                self._save_final()
            plot_curves(self.records, self.out_dir / "curves.png")
        return self.last_eval.get("metrics", {})

    def _already_complete(self) -> dict:
        """`fit()` of a finished run (e.g. the same script run twice): no training, the last evaluation."""
        if self.rank == 0:
            _log.warning("%s: the run is already complete at iteration %d (iters=%d); nothing to train, returning "
                         "its last evaluation (raise iters= to continue it)", self.out_dir, self.iteration,
                         self.cfg.iters)
        if self._eval_pending():  # stopped (or failed) between the last checkpoint and its evaluation
            self._after_eval(self.evaluate())
            self.save_checkpoint()  # now holding it, as the training loop saves it
        elif not self.last_eval and self.val_set is not None:  # a checkpoint from before evaluations were kept
            self.last_eval = {"iter": self.iteration, "metrics": self.evaluate()}
            self._set_train_mode()
        if self.rank == 0 and not (self.out_dir / "final" / "model.safetensors").is_file():
            self._save_final()  # e.g. a crash after the last checkpoint, before the final weights
        return self.last_eval.get("metrics", {})

    def _save_final(self) -> None:
        """`out_dir/final`: the weights, with the classes and preprocessing they were trained with, so that
        `semask segment --model local-dir:out_dir/final` predicts as `semask eval` scores."""
        from ..hub import save_pretrained, training_pretrained_cfg

        d = self.cfg.data
        self.module.pretrained_cfg = training_pretrained_cfg(
            self.train_set.class_info, mean=d.mean, std=d.std, test_scale=d.test_scale, crop_size=d.crop_size,
            dataset=d.type if d.type != "folder" else None)
        save_pretrained(self.module, self.out_dir / "final")

    def _eval_due(self) -> bool:
        """Whether the loop evaluates at the current iteration."""
        c = self.cfg
        return self.val_set is not None and (self.iteration % c.eval_interval == 0 or self.iteration == c.iters)

    def _eval_pending(self) -> bool:
        """An evaluation due at the resumed iteration that the log does not hold (the checkpoint is saved before
        it: it failed, or the run was stopped)."""
        return self.iteration > 0 and self._eval_due() and not any(
            r["iter"] == self.iteration and "mIoU" in r for r in self.records)

    def _train(self) -> None:
        """The training loop, from `self.iteration` to `config.iters` or a stop request."""
        c = self.cfg
        restore = self._install_sigint()
        bar = _progress(c.iters, self.iteration, enabled=self.progress)
        accum, micro, sums = c.accum_steps, 0, {}
        batch_index = self.iteration * accum  # micro-batches consumed so far
        t0 = time.perf_counter()
        self._set_train_mode()
        try:
            while self.iteration < c.iters and not self._stop:
                epoch, start = divmod(batch_index, self.batches_per_epoch)
                for batch in self._loader(epoch, start):
                    micro += 1
                    batch_index += 1
                    group = self.optimizer.param_groups[0]
                    lr = group["lr"] / group.get("lr_mult", 1.0)  # the config's lr, before its group multiplier
                    for k, v in self._forward_backward(batch, sync=micro == accum).items():
                        sums[k] = sums.get(k, 0.0) + v / accum
                    if micro < accum:
                        continue
                    self._optimizer_step()
                    self.iteration += 1
                    values, sums, micro = self._mean_over_processes(sums), {}, 0
                    rec = {"iter": self.iteration, "lr": lr, **values}
                    if self.iteration % c.log_interval == 0 or self.iteration == c.iters:
                        rec["time"] = round(time.perf_counter() - t0, 3)
                        self._record(rec)
                    bar.update(1)
                    bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}")
                    for cb in self.callbacks:
                        cb(self, rec)
                    stop = self._should_stop()
                    saved = self.iteration % c.ckpt_interval == 0 or self.iteration == c.iters or stop
                    if saved:  # before the evaluation: one that fails (bad data, out of memory) loses no training
                        self.save_checkpoint()
                    if self._eval_due() and not stop:  # a stopped run evaluates when resumed (`fit`)
                        self._after_eval(self.evaluate())
                        if saved:  # again, now holding the evaluation, so that a resume need not repeat it
                            self.save_checkpoint()
                    if stop:
                        self._stop = True
                        if self.rank == 0:
                            _log.warning("stopped at iteration %d; checkpoint saved, resume with the same command",
                                         self.iteration)
                        break
                    if self.iteration >= c.iters:
                        break
        finally:
            bar.close()
            restore()

    def evaluate(self, dataset: SegmentationDataset | None = None, *, protocol: EvalProtocol | None = None) -> dict:
        """Metrics over `dataset` (default: the validation set) through the Predictor (`protocol`, default the
        trainer's `eval_protocol`), sharded over processes without padding."""
        dataset = dataset if dataset is not None else self.val_set
        if dataset is None:
            raise ValueError("no validation data: set data.val_split or pass val_set")
        return _evaluate(self.module, dataset, self.cfg, protocol or self.eval_protocol, world=self.world,
                         rank=self.rank, amp_dtype=self.amp_dtype)

    def _after_eval(self, metrics: dict) -> None:
        self.last_eval = {"iter": self.iteration, "metrics": metrics}  # before the checkpoints below save it
        self._record({"iter": self.iteration, "mIoU": metrics["mIoU"], "aAcc": metrics["aAcc"],
                      "mAcc": metrics["mAcc"]})
        if self.rank == 0:
            _log.info("iteration %d:\n%s", self.iteration, format_table(metrics))
            plot_curves(self.records, self.out_dir / "curves.png")
        if metrics["mIoU"] > self.best_miou:
            self.best_miou = metrics["mIoU"]
            self.save_checkpoint(best=True)
        self._set_train_mode()

    def _install_sigint(self) -> Callable[[], None]:
        """First Ctrl-C: finish the iteration, save, stop. Second: abort at once."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):  # noqa: ARG001
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True
            if self.rank == 0:
                print("\nCtrl-C: saving a checkpoint after this iteration (Ctrl-C again to abort)", flush=True)

        signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, previous)


def _float32(out: Any) -> Any:
    """Autocast outputs as float32 for the loss, nested ones too: mask-classification decoders return their deep
    supervision as `aux_outputs`, a list of dicts of tensors."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {k: _float32(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_float32(v) for v in out)
    return out


def _checkpoint_mismatch(ckpt: dict, model: nn.Module, config: TrainConfig, dataset: SegmentationDataset, *,
                         builds: str) -> tuple[str, str] | None:
    """Why training checkpoint `ckpt` cannot load into `model` (built from `config` for `dataset`), or None:
    ("dataset", both class counts) when they differ, else ("model", "it was trained with model=A, `builds` model=B
    (the differing tensors)")."""
    saved = ckpt.get("config") or {}
    diffs = state_dict_differences(model.state_dict(), ckpt["model"])
    saved_model = str(saved.get("model", config.model))  # none recorded (a bare {"model": ...}): the tensors decide
    same_arch = saved_model.partition(".")[0] == config.model.partition(".")[0]
    hidden = _hidden_differences(ckpt, model) if not diffs else []
    if not diffs and same_arch and not hidden:
        return None
    saved_classes = ckpt.get("classes")  # absent from checkpoints written before it was kept
    if saved_classes is not None and len(saved_classes) != dataset.num_classes:
        other = "" if same_arch else f" (and was trained with model={saved_model})"
        return "dataset", (f"it has {len(saved_classes)} classes {_preview(saved_classes)}{other} but "
                           f"{dataset.name} has {dataset.num_classes} {_preview(dataset.classes)}")
    ours = json.loads(json.dumps(config.model_overrides, default=list))  # tuples as the checkpoint's lists
    theirs = saved.get("model_overrides") or {}
    both = ours != theirs  # name the overrides only where they differ
    detail = (f"{len(diffs)} tensor(s) differ, e.g. {'; '.join(diffs[:3])}" if diffs else
              f"the tensors match but {'; '.join(hidden)}: the same weights compute other outputs" if hidden else
              "the tensors match but the architectures differ")
    if same_arch and not both and not hidden:  # an older checkpoint (no class list kept): likely the class count
        detail += f"; {dataset.name} has {dataset.num_classes} classes: was it trained on another class list?"
    return "model", (f"it was trained with {_describe_model(saved_model, theirs if both else {})}, {builds} "
                     f"{_describe_model(config.model, ours if both else {})} ({detail})")


# The manifest's `train` record keys -> TrainConfig keys, for the recipe check.
_RECIPE_KEYS = {"lr": "lr", "weight_decay": "weight_decay", "warmup_iters": "warmup_iters",
                "poly_power": "poly_power", "ohem_min_kept": "ohem_min_kept", "grad_clip": "clip_grad",
                "backbone_lr_mult": "backbone_lr_mult", "decode_head_lr_mult": "head_lr_mult"}


def recipe_differences(config: TrainConfig, model: nn.Module) -> tuple[str | None, dict[str, tuple[Any, Any]]]:
    """(tag, {key: (original, this config)}): the optimiser / schedule / loss settings in which `config` differs
    from the recipe the weights manifest records for the model's tag (the model's own, else its architecture's
    default), e.g. a Mask2Former trained with the SeMask-FPN defaults. (None, {}) for models without a record."""
    from ..hub import load_manifest
    from ..registry import default_tag

    name = config.model
    if "." not in name and ":" not in name:
        with contextlib.suppress(KeyError, ValueError):
            name = default_tag(name)
    entry = load_manifest().get(name) or {}
    record = entry.get("train")
    if not record:
        return None, {}
    diffs = {ours: (record[theirs], getattr(config, ours)) for theirs, ours in _RECIPE_KEYS.items()
             if theirs in record and record[theirs] != getattr(config, ours) and
             not (ours == "clip_grad" and not record[theirs] and not config.clip_grad)}
    pre = entry.get("preprocessing") or {}
    for key in ("crop_size", "test_scale"):  # the training crop and the evaluation scale of the original
        theirs, ours = pre.get(key), getattr(config.data, key)
        if theirs is not None and (ours is None or tuple(theirs) != tuple(ours)):
            diffs[f"data.{key}"] = (tuple(theirs), None if ours is None else tuple(ours))
    if (record.get("prior_loss_weight") and getattr(getattr(model, "config", None), "semantic", False)
            and record["prior_loss_weight"] != config.prior_loss_weight):
        diffs["prior_loss_weight"] = (record["prior_loss_weight"], config.prior_loss_weight)
    return name, diffs


def _warn_recipe(config: TrainConfig, model: nn.Module) -> None:
    tag, diffs = recipe_differences(config, model)
    if diffs:
        _log.warning("%s was trained with %s; this run uses %s. Deliberate changes are fine; for the original recipe "
                     "set these keys (the configs/*.yaml presets do)", tag,
                     ", ".join(f"{k}={a}" for k, (a, _) in diffs.items()),
                     ", ".join(f"{k}={b}" for k, (_, b) in diffs.items()))


def _hidden_differences(ckpt: dict, model: nn.Module) -> list[str]:
    """The fields no tensor shows (`HIDDEN_FIELDS`: semantic layout, semantic window, mask-decoder heads) in which
    the model a checkpoint was trained as and `model` differ, e.g. "semantic_attention (...) vs (...)". From the
    checkpoint's `model_config`; older checkpoints: rebuilt from their registry name and model_overrides (other
    names, or ones this version does not know: nothing to compare)."""
    recorded = ckpt.get("model_config")
    if isinstance(recorded, dict):
        theirs = {k: recorded.get(k) for k in HIDDEN_FIELDS}
    else:
        saved = ckpt.get("config") or {}
        name = saved.get("model")
        if not isinstance(name, str) or ":" in name:  # local-dir: / hf-hub: (never fetched here)
            return []
        from ..registry import get_config  # late: the registry imports the loaders

        try:
            cfg = get_config(name, **(saved.get("model_overrides") or {}))
        except (KeyError, TypeError, ValueError):
            return []
        theirs = {k: getattr(cfg, k) for k in HIDDEN_FIELDS}

    def norm(v: Any) -> Any:
        return tuple(v) if isinstance(v, (list, tuple)) else v

    ours = getattr(model, "config", None)
    if ours is None:
        return []
    return [f"{k} {norm(theirs[k])} vs {norm(getattr(ours, k))}" for k in HIDDEN_FIELDS
            if norm(theirs[k]) != norm(getattr(ours, k))]


def _preview(classes: Sequence[str]) -> str:
    """The first class names, for messages."""
    names = list(classes)
    return str(names[:6])[:-1] + (", ...]" if len(names) > 6 else "]")


def _describe_model(name: str, overrides: dict) -> str:
    """'model=NAME' plus `overrides`, if any (resume errors name both models this way)."""
    return f"model={name}" + (f" with model_overrides={overrides}" if overrides else "")


def _progress(total: int, initial: int, *, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", dynamic_ncols=True)


def _evaluate(model: nn.Module, dataset: SegmentationDataset, config: TrainConfig, protocol: EvalProtocol, *,
              world: int, rank: int, amp_dtype: torch.dtype | None) -> dict:
    """`evaluate` with the config's test scale, crop and normalisation, on this process's shard."""
    d = config.data
    return evaluate(model, dataset, protocol=protocol, test_scale=d.test_scale, crop_size=d.crop_size, mean=d.mean,
                    std=d.std, indices=ShardSampler(len(dataset), num_replicas=world, rank=rank),
                    amp_dtype=amp_dtype, num_workers=min(d.num_workers, 2))


def evaluate_checkpoint(config: TrainConfig, checkpoint: str | Path, *, split: str | None = None,
                        protocol: EvalProtocol | None = None) -> tuple[dict, SegmentationDataset]:
    """Metrics of a training checkpoint (`.pt`) or semask weights (folder / `.safetensors`) on `split` (default:
    `config.data.val_split`) through the Predictor (`protocol`, default the config's: `config_protocol`), sharded
    over processes when launched with torchrun."""
    from ..registry import create_model

    c, d = config, config.data
    _check_data_root(d)
    split = split if split is not None else default_splits(d.type, d.root, d.train_split, d.val_split)[1]
    if split is None:
        raise ValueError("no evaluation split: set data.val_split=... or pass --split")
    rank, world, local_rank = init_distributed()
    device = resolve_device(c.device, local_rank=local_rank)
    kwargs = {"classes": d.classes, "reduce_zero_label": d.reduce_zero_label} if d.type == "folder" else {}
    dataset = build_dataset(d.type, d.root, split, **kwargs)
    path = Path(checkpoint)
    if path.suffix == ".pt":
        model = create_model(c.model, num_classes=dataset.num_classes, **c.model_overrides)
        ckpt = load_checkpoint(path)
        mismatch = _checkpoint_mismatch(ckpt, model, c, dataset, builds="this config builds")
        if mismatch is not None:
            raise ValueError(f"checkpoint {path} is for another {mismatch[0]}: {mismatch[1]}. Evaluate it with the "
                             "config it was trained with (its model, model_overrides and data)")
        model.load_state_dict(ckpt["model"])
    else:
        model = create_model(c.model, pretrained=path, **c.model_overrides)
    if model.config.num_classes != dataset.num_classes:
        raise ValueError(f"{checkpoint} predicts {model.config.num_classes} classes but {dataset.name} has "
                         f"{dataset.num_classes}")
    model.to(device)
    metrics = _evaluate(model, dataset, c, protocol or config_protocol(c), world=world, rank=rank,
                        amp_dtype=AMP_DTYPES[c.amp])
    return metrics, dataset
