"""Learning the watermark: the paper's sharpness-aware sign descent, done efficiently.

Efficiency choices (issue: speed): the model's parameters are frozen so autograd computes only the input
gradient; data stay uint8 tensors on the device and are normalized and flipped per batch on tensors; randomness
is derived statelessly from (seed, epoch, step), which also makes resuming from a checkpoint exact.

The loop reads as its steps: :meth:`WatermarkLearner.fit` prepares a :class:`FitRun` (data, resume state,
counters), then each epoch reads its batches (:meth:`~WatermarkLearner._read_batch`), takes one sharpness-aware step
per batch (:class:`..step.SamStep`, or its CUDA graph) and closes with a record, a validation and a checkpoint.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from watermark_ood.core import distributed
from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.progress import bar as progress_bar
from watermark_ood.core.progress import interactive, say
from watermark_ood.core.randomness import generator
from watermark_ood.core.version import __version__
from watermark_ood.data.images import ImageSet
from watermark_ood.data.preprocessing import Normalization
from watermark_ood.data.streaming import BadImage, is_streaming, step_batches
from watermark_ood.data.synthetic import data_channel_std, flat_and_grey, mosaic
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.stop import STOP
from watermark_ood.watermark.checkpoint import FitCheckpoint
from watermark_ood.watermark.config import FitConfig
from watermark_ood.watermark.file import Watermark
from watermark_ood.watermark.fit_state import FitOptions, FitRun, ImageSource
from watermark_ood.watermark.objectives import energy_scale_note
from watermark_ood.watermark.preflight import MARGIN_IMAGES, check_classes, resolve_margins
from watermark_ood.watermark.records import EpochCallback, EpochRecord, FitResult, ValidationFn
from watermark_ood.watermark.step import SamStep, StepGraph, prepare_forward

PERMUTATION_TAG = 0x5EED
SUBSET_TAG = 0x5B5E7
FINITE_CHECK_EVERY = 50  # steps between NaN checks on accelerators (each one waits for the device)


class StopRequested(Exception):
    """Raised inside the loop when a signal handler asked the fit to stop after a checkpoint."""


class WatermarkLearner:
    """Learns a watermark for a fixed classifier ``model`` that maps normalized images to logits.

    The model is put in eval mode and its parameters are never changed; their
    ``requires_grad`` flags are restored after fitting.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        normalization: Normalization,
        config: FitConfig | None = None,
        execution: ExecutionConfig | None = None,
        model_id: str = "model",
    ) -> None:
        self.model = model
        self.normalization = normalization
        self.config = config or FitConfig()
        self.execution = execution or ExecutionConfig()
        self.model_id = model_id
        self.stop_requested = False
        self.noise_std: torch.Tensor | float = self.config.sigma
        self.anchors: torch.Tensor | None = None  # unit ID class means of the penultimate features (features objective)

    # ------------------------------------------------------------------ helpers
    def training_subset(self, train: ImageSet) -> ImageSet:
        """The seeded subset named by ``train_limit`` (all of ``train`` when unset)."""
        limit = self.config.train_limit
        if limit is None or limit >= len(train):
            return train
        order = torch.randperm(len(train), generator=generator(torch.device("cpu"), self.config.seed, SUBSET_TAG))
        return train.subset(order[:limit].sort().values)

    def steps_per_epoch(self, n: int) -> int:
        b = self.config.batch_size
        return n // b if self.config.drop_last else math.ceil(n / b)

    def metadata(self, image_shape: tuple[int, ...]) -> dict[str, Any]:

        return {
            "objective": self.config.objective,
            "hyperparameters": self.config.hyperparameters(),
            "input_shape": list(image_shape),
            "normalization": self.normalization.to_dict(),
            "model": self.model_id,
            "package_version": __version__,
        }

    def batch(self, pixels: torch.Tensor, y: torch.Tensor, n: int, rows: torch.Tensor, rng: torch.Generator,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalized, randomly flipped ID images, their labels and a same-sized noise batch.

        ``pixels`` are rows ``rows`` of a global batch of ``n`` (a torchrun rank's slice, less any skipped
        image): flips and noise are drawn for all ``n`` and then sliced, so every row gets the values a single
        process reading every image would give it.
        """
        x = self.normalization(pixels.to(device, non_blocking=True))
        if self.config.hflip:
            flip = (torch.rand(n, generator=rng, device=device) < 0.5)[rows]
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        if self.config.surrogate == "mosaic":
            return x, y, mosaic(x, rng)
        noise = torch.randn((n, *x.shape[1:]), generator=rng, device=device)[rows] * self.noise_std
        if self.config.surrogate == "mixed":
            noise = flat_and_grey(x, noise, self.normalization, n, rows, rng)
        return x, y, noise

    # --------------------------------------------------------------------- fit
    def fit(
        self,
        train: ImageSource,
        callback: EpochCallback | None = None,
        progress: bool = True,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 200,
        max_steps: int | None = None,
        validator: ValidationFn | None = None,
        validate_every: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> FitResult:
        """Run the schedule on ``train`` (labels required) and return the watermark and its history.

        ``max_steps`` ends this call early (for smoke runs and benchmarks).
        With a ``validator`` the watermark is scored on held-out data at the
        start, every ``validate_every`` steps (default: each epoch) and at the
        end, and the best one is returned (validation-based best-step selection).
        Notices (resuming, and one line per epoch when stderr is not a terminal)
        go to ``log``, by default to stderr when ``progress`` is on.
        ``train`` may be streamed from disk (:class:`streaming.FileImageSet`): batches are then decoded by
        DataLoader workers, and an unreadable file stops the fit with its path after a checkpoint (or is
        skipped, with the set's ``skip_bad``).
        """
        options = FitOptions(callback, progress, checkpoint_every, max_steps, validator, validate_every,
                           log or (say if progress else None))
        run = self._prepare(train, checkpoint_dir, options)
        with self._frozen_model(run.device) as forward:
            run.sam = SamStep(forward, self.config, self.execution, run.device, self.anchors)
            t0 = time.perf_counter()
            self._validate(run)
            for epoch in range(run.start_epoch, self.config.epochs):
                if not self._epoch(run, epoch):
                    break
        return self._result(run, time.perf_counter() - t0)

    def _prepare(self, train: ImageSource, checkpoint_dir: str | Path | None, options: FitOptions) -> FitRun:
        """Check the data against the model, resolve the config, and resume from a checkpoint if there is one."""
        cfg, exe = self.config, self.execution
        exe.apply_threads()
        device = exe.torch_device()
        train = self.training_subset(train)
        if (train.labels < 0).any():
            raise WatermarkOODError(f"{train.name}: training needs class labels, found negative labels")
        self.normalization.check_channels(train.image_shape[0])
        cfg = self.config = self.resolve_margins(train, cfg, device)
        image_shape = self.input_shape = train.image_shape
        self.check_classes(train, device)
        n, steps = len(train), self.steps_per_epoch(len(train))
        if steps == 0:
            raise WatermarkOODError(f"{n} training images is fewer than one batch of {cfg.batch_size} with drop_last")
        self.noise_std = cfg.sigma
        if cfg.noise_scale == "data":
            self.noise_std = cfg.sigma * data_channel_std(train, self.normalization).to(device)
        run = FitRun(train, None if is_streaming(train) else train.images.to(device), train.labels.to(device), steps,
                   device, options, options.validate_every or steps,
                   # each finiteness check waits for the device: every step on the CPU, every 50 on accelerators
                   1 if device.type == "cpu" else FINITE_CHECK_EVERY,
                   torch.zeros((1, *image_shape), device=device), torch.ones((), dtype=torch.bool, device=device))
        if checkpoint_dir is not None:
            run.ckpt = FitCheckpoint(checkpoint_dir, cfg, image_shape, n)
            if run.ckpt.exists():
                state = run.ckpt.load()
                run.w = state.watermark.to(device)
                run.start_epoch, run.start_step, run.history = state.epoch, state.step, state.history
                run.best, run.validation = state.best, state.validation
                # a notice, not progress: said even with progress off (--no-progress), so a rerun says it resumed
                (options.log or say)(f"resuming from epoch {run.start_epoch + 1}, step {run.start_step} of {steps} "
                                     f"({run.ckpt.path})")
        run.global_step = run.last_checked = run.start_epoch * steps + run.start_step
        return run

    @contextmanager
    def _frozen_model(self, device: torch.device) -> Iterator[Callable[[torch.Tensor], Any]]:
        """The model's forward as the objective needs it, in eval mode with frozen parameters (and cuDNN
        autotuning on CUDA: the batch shapes are fixed); flags, mode and cuDNN setting restored afterwards."""
        cudnn_benchmark = torch.backends.cudnn.benchmark
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        flags, was_training = None, self.model.training
        try:
            forward = prepare_forward(self.model, self.config, self.execution, device, self.input_shape)
            flags = [p.requires_grad for p in self.model.parameters()]
            self.model.eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
            yield forward
        finally:
            torch.backends.cudnn.benchmark = cudnn_benchmark
            if flags is not None:
                for p, flag in zip(self.model.parameters(), flags):
                    p.requires_grad_(flag)
                self.model.train(was_training)

    def _epoch(self, run: FitRun, epoch: int) -> bool:
        """One epoch's steps, then its record, validation and checkpoint; False when ``max_steps`` ended the fit."""
        cfg, options = self.config, run.options
        order = torch.randperm(len(run.train), generator=generator(torch.device("cpu"), cfg.seed, PERMUTATION_TAG,
                                                                   epoch)).to(run.device)
        first = run.start_step if epoch == run.start_epoch else 0
        loss_sum = torch.zeros(3, device=run.device)
        epoch_t0 = time.perf_counter()
        show = options.progress and interactive()
        bar = progress_bar(range(first, run.steps), options.progress, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           leave=False, unit="step", initial=first, total=run.steps)
        stream = step_batches(run.train, order, first, run.steps, cfg.batch_size, cfg.seed, epoch, self._read_part,
                              pin_memory=run.device.type == "cuda") if run.streaming else None
        for step in bar:
            loss = self._train_step(run, epoch, step, order, stream)
            loss_sum += loss
            if show and (step % 10 == 0 or step == run.steps - 1):
                mean = (loss_sum / (step - first + 1)).tolist()
                bar.set_postfix(ce=f"{mean[1]:.4g}", ood_term=f"{mean[2]:.4g}")
            if self._after_step(run, epoch, step, loss):
                break
        bar.close()
        record = self._epoch_record(run, epoch, first, loss_sum, time.perf_counter() - epoch_t0)
        if options.max_steps is not None and run.images_seen >= options.max_steps * cfg.batch_size:
            return False
        run.history.append(record)
        if options.log is not None and not show:
            options.log(record.describe(cfg.epochs))
        if options.log is not None and len(run.history) == 1 and energy_scale_note(cfg.objective, record.ood_term):
            options.log(energy_scale_note(cfg.objective, record.ood_term))  # once, the first time
        self._validate(run)
        run.save(epoch + 1, 0)
        if options.callback is not None:
            options.callback(record, run.w.detach().cpu())
        return True

    def _read_part(self, index: torch.Tensor) -> slice:
        """The rows of a global batch this rank reads: its torchrun slice; all of it for mosaic surrogates, which
        are cut from the whole batch."""
        return slice(0, len(index)) if self.config.surrogate == "mosaic" else distributed.shard(index)[0]

    def _read_batch(self, run: FitRun, epoch: int, step: int, index: torch.Tensor, stream: Iterator | None,
                    rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """This rank's ID images, labels and surrogates of one global batch, and its share of the batch.

        Under torchrun each rank takes its slice of the global batch and its noise; gradients weighted by the
        slice's share and summed equal the single-process gradient.
        """
        device = run.device
        part, total = distributed.shard(index)
        rows = torch.arange(len(index), device=device)[self._read_part(index)]
        if stream is not None:
            try:
                kept, pixels = next(stream)
            except BadImage as error:
                run.save(epoch, step)
                raise bad_image_stop(error, epoch, step, run.ckpt.path if run.ckpt else None) from None
            rows = rows[kept.to(device)]
        else:
            pixels = run.images[index[rows]]
        x, y, noise = self.batch(pixels, run.labels[index[rows]], len(index), rows, rng, device)
        if self.config.surrogate == "mosaic":
            mine = (rows >= (part.start or 0)) & (rows < part.stop)
            x, y, noise = x[mine], y[mine], noise[mine]
        if run.streaming and run.train.skip_bad:  # shares of the images actually read, on every rank
            total = int(distributed.all_reduce_sum(torch.tensor([float(len(y))], device=device)).item())
        return x, y, noise, len(y) / max(1, total)

    def _train_step(self, run: FitRun, epoch: int, step: int, order: torch.Tensor,
                    stream: Iterator | None) -> torch.Tensor:
        """Read one batch and take one sharpness-aware step; returns the losses before it."""
        cfg = self.config
        alpha = cfg.alpha_at_step(epoch, step, run.steps)
        rng = generator(run.device, cfg.seed, epoch, step)
        index = order[step * cfg.batch_size: (step + 1) * cfg.batch_size]
        x, y, noise, share = self._read_batch(run, epoch, step, index, stream, rng)
        sam = run.sam
        if sam.use_graphs and len(y) not in run.graphs:
            try:
                run.graphs[len(y)] = StepGraph(sam, run.w, x, y, noise)
            except Exception as error:  # noqa: BLE001 - fall back to eager steps, say so once
                warnings.warn(f"CUDA graph capture failed ({type(error).__name__}: {error}); "
                              "continuing with eager steps", RuntimeWarning, stacklevel=2)
                sam.use_graphs = False
        if sam.use_graphs:
            loss, w_next = run.graphs[len(y)](run.w, x, y, noise, alpha)
        else:
            loss, w_next = sam(run.w, x, y, noise, alpha, share)
        run.finite = run.finite & torch.isfinite(loss).all() & torch.isfinite(w_next).all()
        run.w = w_next
        run.images_seen += len(index)
        run.global_step += 1
        return loss

    def _after_step(self, run: FitRun, epoch: int, step: int, loss: torch.Tensor) -> bool:
        """Validate, save and stop when due; True when ``max_steps`` is reached. Nothing leaves the loop
        (validation, checkpoint, stop, epoch end) without a finiteness check."""
        options = run.options
        stopping = distributed.any_rank(self.stop_requested or STOP.is_set(), run.device)
        limit_reached = options.max_steps is not None and run.images_seen >= options.max_steps * self.config.batch_size
        validating = run.global_step % run.validate_every == 0
        saving = run.ckpt is not None and (run.global_step % options.checkpoint_every == 0 or stopping)
        if run.global_step % run.check_every == 0 or step == run.steps - 1 or limit_reached or validating \
                or saving or stopping:
            self._check_finite(run, loss, epoch, step)
        if validating:
            self._validate(run)
        if saving:
            run.save(epoch, step + 1)
        if stopping:
            raise StopRequested(run.ckpt.path if run.ckpt else None)
        return limit_reached

    def _check_finite(self, run: FitRun, loss: torch.Tensor, epoch: int, step: int) -> None:
        at = run.global_step
        if not bool(run.finite):
            where = f"epoch {epoch + 1}, step {step + 1}" if at - run.last_checked <= 1 else \
                f"one of global steps {run.last_checked + 1}-{at} (epoch {epoch + 1})"
            what = "the watermark became NaN/infinite" if torch.isfinite(loss).all() else \
                f"the loss became {float(loss[0])}"
            raise WatermarkOODError(f"{what} at {where}; lower alpha/beta/temperatures "
                                    "(the last good checkpoint is kept)")
        run.last_checked = at

    def _validate(self, run: FitRun) -> None:
        """Score the current watermark on held-out data once per global step; keep the best one."""
        validator, at = run.options.validator, run.global_step
        if validator is None or any(v["step"] == at for v in run.validation):
            return
        outcome = validator(run.w.detach().cpu())
        run.validation.append({"step": at, **outcome.to_dict()})
        if run.best is None or outcome.key < tuple(run.best["key"]):
            run.best = {"step": at, "key": list(outcome.key), "watermark": run.w.detach().cpu().clone()}

    def _epoch_record(self, run: FitRun, epoch: int, first: int, loss_sum: torch.Tensor,
                      seconds: float) -> EpochRecord:
        stats = run.w.abs()
        mean = (loss_sum / max(1, run.steps - first)).tolist()
        return EpochRecord(epoch=epoch + 1, loss=mean[0], ce=mean[1], ood_term=mean[2],
                           alpha=self.config.alpha_at_step(epoch, run.steps - 1, run.steps),
                           max_abs=float(stats.max()), mean_abs=float(stats.mean()), l2=float(run.w.norm()),
                           seconds=seconds, steps=run.steps - first)

    def _result(self, run: FitRun, seconds: float) -> FitResult:
        """The best watermark (by validation, else the last), with its history in its metadata."""
        skipped = list(run.train.skipped)  # always empty for in-memory sets
        w, selected = (run.best["watermark"], run.best["step"]) if run.best is not None else (run.w, None)
        watermark = Watermark(w, self.metadata(run.train.image_shape))
        watermark.metadata["history"] = [r.to_dict() for r in run.history]
        if selected is not None:
            watermark.metadata["selected_step"] = selected
        if skipped:
            watermark.metadata["skipped_images"] = skipped
        return FitResult(watermark, run.history, seconds, run.images_seen, run.start_epoch * run.steps
                         + run.start_step, selected, run.validation, skipped)

    def check_classes(self, train: ImageSource, device: torch.device) -> None:
        """:func:`..preflight.check_classes` for this model."""
        check_classes(self.model, train, device)

    def resolve_margins(self, train: ImageSet, cfg: FitConfig, device: torch.device,
                        limit: int = MARGIN_IMAGES) -> FitConfig:
        """:func:`..preflight.resolve_margins` for this model; the features objective's anchors are kept."""
        cfg, anchors = resolve_margins(self.model, self.normalization, train, cfg, device, limit)
        if anchors is not None:
            self.anchors = anchors
        return cfg


def bad_image_stop(error: BadImage, epoch: int, step: int, checkpoint: Path | None) -> WatermarkOODError:
    """The one-line stop for an unreadable training image: which file, and how to go on."""
    where = f"epoch {epoch + 1}, step {step + 1}"
    if checkpoint is None:
        return WatermarkOODError(f"{error} (at {where})")
    return WatermarkOODError(f"{error} (at {where}); the fit saved {checkpoint}: replace the file and run the same "
                             "command to resume there")


def fit_watermark(model: torch.nn.Module, train: ImageSource, normalization: Normalization,
                  config: FitConfig | None = None, execution: ExecutionConfig | None = None,
                  **fit_kwargs: Any) -> FitResult:
    """One-call API: ``fit_watermark(model, train_set, CIFAR, get_preset('cifar10-msp').config())``."""
    return WatermarkLearner(model, normalization, config, execution).fit(train, **fit_kwargs)
