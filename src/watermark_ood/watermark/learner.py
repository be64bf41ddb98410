"""Learning the watermark: the paper's sharpness-aware sign descent, done efficiently.

Efficiency choices (issue: speed): the model's parameters are frozen so
autograd computes only the input gradient; data stay uint8 tensors on the
device and are normalized and flipped per batch on tensors; randomness is
derived statelessly from (seed, epoch, step), which also makes resuming from a
checkpoint exact.

Longer than 400 lines for now: the learner is not yet split into named steps (issue 25, item 3, open).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from watermark_ood.core import distributed
from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.progress import bar as progress_bar
from watermark_ood.core.progress import interactive, say
from watermark_ood.core.randomness import generator
from watermark_ood.data.images import ImageSet
from watermark_ood.data.preprocessing import Normalization, luma
from watermark_ood.data.streaming import BadImage, FileImageSet, is_streaming, step_batches
from watermark_ood.models.taps import PenultimateHook, split_at_head
from watermark_ood.runtime.device import ExecutionConfig, prepare_model
from watermark_ood.runtime.stop import STOP
from watermark_ood.watermark.checkpoint import FitCheckpoint
from watermark_ood.watermark.config import LSE_MARGIN_OBJECTIVES, FitConfig
from watermark_ood.watermark.file import Watermark
from watermark_ood.watermark.objectives import class_mean_distance, objective_terms
from watermark_ood.watermark.records import EpochRecord

ImageSource = ImageSet | FileImageSet  # in memory, or streamed from disk: the learner reads both the same way

PERMUTATION_TAG = 0x5EED
SUBSET_TAG = 0x5B5E7
MARGIN_TAG = 0x3A6
MARGIN_IMAGES = 5000  # ID training images whose logsumexp quantiles set the hinge margins
FINITE_CHECK_EVERY = 50  # steps between NaN checks on accelerators (each one waits for the device)


def energy_scale_note(objective: str, ood_term: float | None) -> str:
    """The one-line explanation, said once, of the energy objective's huge but expected OOD term ('' otherwise).

    >>> energy_scale_note("energy", 1.6e16)[:40]
    'note: the OOD term 1.6e+16 is expected, '
    >>> energy_scale_note("msp", 1.6e16)
    ''
    """
    if objective != "energy" or ood_term is None or not ood_term > 1e6:
        return ""
    return (f"note: the OOD term {ood_term:.2g} is expected, not a divergence: the paper's energy objective is "
            "beta * mean exp(T_out * z) over the noise images' logits z, which is astronomically large for a "
            "confident classifier; only its gradient's sign is used")


class ValidationFn(Protocol):
    """Scores a candidate watermark on held-out ID data; lower ``key`` is better."""

    def __call__(self, w: torch.Tensor) -> Any: ...


@dataclass
class FitResult:
    watermark: Watermark
    history: list[EpochRecord] = field(default_factory=list)
    fit_seconds: float = 0.0
    images_seen: int = 0
    resumed_from_step: int = 0
    selected_step: int | None = None
    validation: list[dict[str, Any]] = field(default_factory=list)
    skipped_images: list[str] = field(default_factory=list)  # unreadable files left out (--skip-bad-images)

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.fit_seconds if self.fit_seconds > 0 else 0.0


EpochCallback = Callable[[EpochRecord, torch.Tensor], None]


class StopRequested(Exception):
    """Raised inside the loop when a signal handler asked the fit to stop after a checkpoint."""


def data_channel_std(images: "ImageSource | torch.Tensor", normalization: Normalization,
                     limit: int = 10000) -> torch.Tensor:
    """Per-channel std of the normalized data (on at most ``limit`` images), shape (1, C, 1, 1).

    Accumulated batch by batch in float64, so a streamed set is never held in memory.
    """
    if isinstance(images, torch.Tensor):
        images = ImageSet(images, torch.full((len(images),), -1), "data")
    total, total_sq, count = 0.0, 0.0, 0
    for _, pixels in images.batches(500, torch.arange(min(limit, len(images)))):
        x = normalization(pixels).double().transpose(0, 1).flatten(1)
        total, total_sq, count = total + x.sum(1), total_sq + (x * x).sum(1), count + x.shape[1]
    mean = total / count
    variance = (total_sq - count * mean * mean) / max(1, count - 1)
    return variance.clamp_min(0).sqrt().float().view(1, -1, 1, 1)


def mosaic(x: torch.Tensor, rng: torch.Generator, patch: int = 8) -> torch.Tensor:
    """Surrogate outliers: each image a grid of patches drawn at random from all images of the batch.

    Patches are ``patch`` pixels wide, smaller for small images so that every mosaic has at least 2 x 2 of them.
    """
    n, c, h, w = x.shape
    if h < 2 or w < 2:
        raise WatermarkOODError(f"mosaic surrogates need images of at least 2x2 pixels, got {h}x{w}")
    patch = min(patch, h // 2, w // 2)
    gh, gw = h // patch, w // patch
    tiles = x[:, :, : gh * patch, : gw * patch].reshape(n, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n * gh * gw, c, patch, patch)
    pick = torch.randint(0, len(tiles), (len(tiles),), generator=rng, device=x.device)
    out = tiles[pick].reshape(n, gh, gw, c, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(n, c, gh * patch, gw * patch)
    if (gh * patch, gw * patch) != (h, w):
        out = torch.nn.functional.pad(out, (0, w - gw * patch, 0, h - gh * patch))
    return out


def flat_and_grey(x: torch.Tensor, noise: torch.Tensor, normalization: Normalization, n: int, rows: torch.Tensor,
                  rng: torch.Generator) -> torch.Tensor:
    """'mixed' surrogates: of ``noise`` (rows of a global batch of ``n``) a quarter becomes flat colours and a
    quarter greyscale (BT.601 luma) copies of the normalized ID images ``x``, all in normalized space.

    Which row gets which kind, and the colours, are drawn for the whole global batch and then sliced, like the
    noise, so torchrun ranks and skipped images do not change any row's surrogate.
    """
    n_rows, c = x.shape[:2]
    kind = torch.randint(0, 4, (n,), generator=rng, device=x.device)[rows].view(-1, 1, 1, 1)
    colour = torch.rand((n, c, 1, 1), generator=rng, device=x.device)[rows]
    mean = torch.tensor(normalization.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(normalization.std, device=x.device).view(1, -1, 1, 1)
    grey = ((luma(x.float() * std + mean).expand(n_rows, c, *x.shape[2:]) - mean) / std).to(noise.dtype)
    flat = ((colour - mean) / std).expand_as(noise).to(noise.dtype)
    return torch.where(kind == 0, flat, torch.where(kind == 1, grey, noise))


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
        from watermark_ood.core.version import __version__

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
        log = log or (say if progress else None)
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
        streaming = is_streaming(train)
        images = None if streaming else train.images.to(device)
        labels = train.labels.to(device)
        n, steps = len(train), self.steps_per_epoch(len(train))
        if steps == 0:
            raise WatermarkOODError(f"{n} training images is fewer than one batch of {cfg.batch_size} with drop_last")
        self.noise_std = cfg.sigma
        if cfg.noise_scale == "data":
            self.noise_std = cfg.sigma * data_channel_std(train, self.normalization).to(device)
        validate_every = validate_every or steps

        ckpt = FitCheckpoint(checkpoint_dir, cfg, image_shape, n) if checkpoint_dir is not None else None
        start_epoch, start_step, history = 0, 0, []
        w = torch.zeros((1, *image_shape), device=device)
        best: dict[str, Any] | None = None
        validation: list[dict[str, Any]] = []
        if ckpt is not None and ckpt.exists():
            state = ckpt.load()
            w = state.watermark.to(device)
            start_epoch, start_step, history = state.epoch, state.step, state.history
            best, validation = state.best, state.validation
            # a notice, not progress: said even with progress off (--no-progress), so a rerun says it resumed
            (log or say)(f"resuming from epoch {start_epoch + 1}, step {start_step} of {steps} ({ckpt.path})")

        def validate(point: torch.Tensor, at_step: int) -> None:
            nonlocal best
            if validator is None or any(v["step"] == at_step for v in validation):
                return
            outcome = validator(point.detach().cpu())
            record = {"step": at_step, **outcome.to_dict()}
            validation.append(record)
            if best is None or outcome.key < tuple(best["key"]):
                best = {"step": at_step, "key": list(outcome.key), "watermark": point.detach().cpu().clone()}

        cudnn_benchmark = torch.backends.cudnn.benchmark
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed batch shapes: let cuDNN pick its fastest kernels
        forward = self._prepare_model(device)
        flags = [p.requires_grad for p in self.model.parameters()]
        was_training = self.model.training
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

        use_graphs = graphs_apply(exe, device)

        def run(inputs: torch.Tensor):
            if exe.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with exe.autocast(device, cache_enabled=not use_graphs):
                return forward(inputs)

        def scores_at_zero(noise: torch.Tensor) -> torch.Tensor | None:
            """anchored: the outliers' logsumexp without the watermark; it does not depend on the watermark, so it
            is computed once per step, not at both points of the sharpness-aware step."""
            if cfg.objective != "anchored":
                return None
            with torch.no_grad():
                return torch.logsumexp(run(noise).float(), dim=1)

        def loss_at(point: torch.Tensor, x, y, noise, at_zero) -> torch.Tensor:
            out = run(torch.cat([x, noise]) + point)
            n = len(x)
            if cfg.objective == "features":
                feats, logits = out
                ce, ood = objective_terms(cfg, logits[:n], y, logits[n:], (feats[:n], feats[n:], self.anchors))
            else:
                ce, ood = objective_terms(cfg, out[:n], y, out[n:], lse_out_at_zero=at_zero)
            return torch.stack([ce + ood, ce, ood])

        def grad_at(point: torch.Tensor, x, y, noise, at_zero) -> tuple[torch.Tensor, torch.Tensor]:
            """(loss, cross-entropy, OOD term) at ``point`` and the gradient of the loss."""
            point = point.detach().requires_grad_(True)
            losses = loss_at(point, x, y, noise, at_zero)
            (grad,) = torch.autograd.grad(losses[0], point)
            return losses.detach(), grad

        def sam_step(point: torch.Tensor, x, y, noise, alpha, share: float = 1.0):
            """One sharpness-aware sign step; returns the loss at ``point`` and the next watermark."""
            at_zero = scores_at_zero(noise)
            loss, g1 = grad_at(point, x, y, noise, at_zero)
            if distributed.is_distributed():
                loss = distributed.all_reduce_sum(loss * share)
                g1 = distributed.all_reduce_sum(g1 * share)
            e = g1 / g1.norm().clamp_min(1e-12)
            _, g2 = grad_at(point + cfg.rho * e, x, y, noise, at_zero)
            if distributed.is_distributed():
                g2 = distributed.all_reduce_sum(g2 * share)
            return loss, cfg.project(point - alpha * torch.sign(g2))

        graphs: dict[int, StepGraph] = {}

        # Finiteness is checked every step on the CPU; on accelerators every FINITE_CHECK_EVERY steps (and
        # before anything is saved), since each check waits for the device and stalls the launch queue.
        check_every = 1 if device.type == "cpu" else FINITE_CHECK_EVERY
        finite = torch.ones((), dtype=torch.bool, device=device)
        last_checked = start_epoch * steps + start_step

        def check_finite(ok: torch.Tensor, loss: torch.Tensor, epoch: int, step: int, at: int) -> None:
            nonlocal last_checked
            if not bool(ok):
                where = f"epoch {epoch + 1}, step {step + 1}" if at - last_checked <= 1 else \
                    f"one of global steps {last_checked + 1}-{at} (epoch {epoch + 1})"
                what = "the watermark became NaN/infinite" if torch.isfinite(loss).all() else \
                    f"the loss became {float(loss[0])}"
                raise WatermarkOODError(f"{what} at {where}; lower alpha/beta/temperatures "
                                        "(the last good checkpoint is kept)")
            last_checked = at

        t0, images_seen = time.perf_counter(), 0
        global_step = start_epoch * steps + start_step
        validate(w, global_step)
        try:
            for epoch in range(start_epoch, cfg.epochs):
                order = torch.randperm(n, generator=generator(torch.device("cpu"), cfg.seed, PERMUTATION_TAG, epoch))
                order = order.to(device)
                first = start_step if epoch == start_epoch else 0
                loss_sum = torch.zeros(3, device=device)
                epoch_t0 = time.perf_counter()
                show = progress and interactive()
                bar = progress_bar(range(first, steps), progress, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                                   leave=False, unit="step", initial=first, total=steps)
                # Mosaic surrogates are cut from the whole batch, so each rank reads all of it.
                read_part = (lambda index: slice(0, len(index))) if cfg.surrogate == "mosaic" else \
                    (lambda index: distributed.shard(index)[0])
                stream = step_batches(train, order, first, steps, cfg.batch_size, cfg.seed, epoch, read_part,
                                      pin_memory=device.type == "cuda") if streaming else None
                for step in bar:
                    alpha = cfg.alpha_at_step(epoch, step, steps)
                    rng = generator(device, cfg.seed, epoch, step)
                    index = order[step * cfg.batch_size: (step + 1) * cfg.batch_size]
                    # Under torchrun each rank takes its slice of the global batch and its noise; gradients
                    # weighted by the slice's share and summed equal the single-process gradient.
                    part, total = distributed.shard(index)
                    rows = torch.arange(len(index), device=device)[read_part(index)]
                    if stream is not None:
                        try:
                            kept, pixels = next(stream)
                        except BadImage as error:
                            if ckpt is not None:
                                ckpt.save(w, epoch, step, history, steps, best, validation)
                            raise bad_image_stop(error, epoch, step, ckpt.path if ckpt else None) from None
                        rows = rows[kept.to(device)]
                    else:
                        pixels = images[index[rows]]
                    x, y, noise = self.batch(pixels, labels[index[rows]], len(index), rows, rng, device)
                    if cfg.surrogate == "mosaic":
                        mine = (rows >= (part.start or 0)) & (rows < part.stop)
                        x, y, noise = x[mine], y[mine], noise[mine]
                    if streaming and train.skip_bad:  # shares of the images actually read, on every rank
                        total = int(distributed.all_reduce_sum(torch.tensor([float(len(y))], device=device)).item())
                    share = len(y) / max(1, total)
                    if use_graphs and len(y) not in graphs:
                        try:
                            graphs[len(y)] = StepGraph(sam_step, w, x, y, noise)
                        except Exception as error:  # noqa: BLE001 - fall back to eager steps, say so once
                            warnings.warn(f"CUDA graph capture failed ({type(error).__name__}: {error}); "
                                          "continuing with eager steps", RuntimeWarning, stacklevel=2)
                            use_graphs = False
                    if use_graphs:
                        loss, w_next = graphs[len(y)](w, x, y, noise, alpha)
                    else:
                        loss, w_next = sam_step(w, x, y, noise, alpha, share)
                    finite = finite & torch.isfinite(loss).all() & torch.isfinite(w_next).all()
                    w = w_next
                    loss_sum += loss
                    images_seen += len(index)
                    global_step += 1
                    stopping = distributed.any_rank(self.stop_requested or STOP.is_set(), device)
                    limit_reached = max_steps is not None and images_seen >= max_steps * cfg.batch_size
                    validating = global_step % validate_every == 0
                    saving = ckpt is not None and (global_step % checkpoint_every == 0 or stopping)
                    # Nothing leaves the loop (validation, checkpoint, stop, epoch end) without a finiteness check.
                    if global_step % check_every == 0 or step == steps - 1 or limit_reached or validating or saving \
                            or stopping:
                        check_finite(finite, loss, epoch, step, global_step)
                    if show and (step % 10 == 0 or step == steps - 1):
                        mean = (loss_sum / (step - first + 1)).tolist()
                        bar.set_postfix(ce=f"{mean[1]:.4g}", ood_term=f"{mean[2]:.4g}")
                    if validating:
                        validate(w, global_step)
                    if saving:
                        ckpt.save(w, epoch, step + 1, history, steps, best, validation)
                    if stopping:
                        raise StopRequested(ckpt.path if ckpt else None)
                    if limit_reached:
                        break
                bar.close()
                stats = w.abs()
                mean = (loss_sum / max(1, steps - first)).tolist()
                record = EpochRecord(
                    epoch=epoch + 1, loss=mean[0], ce=mean[1], ood_term=mean[2],
                    alpha=cfg.alpha_at_step(epoch, steps - 1, steps),
                    max_abs=float(stats.max()), mean_abs=float(stats.mean()), l2=float(w.norm()),
                    seconds=time.perf_counter() - epoch_t0, steps=steps - first,
                )
                if max_steps is not None and images_seen >= max_steps * cfg.batch_size:
                    break
                history.append(record)
                if log is not None and not show:
                    log(record.describe(cfg.epochs))
                if log is not None and len(history) == 1 and energy_scale_note(cfg.objective, record.ood_term):
                    log(energy_scale_note(cfg.objective, record.ood_term))  # once, the first time
                validate(w, global_step)
                if ckpt is not None:
                    ckpt.save(w, epoch + 1, 0, history, steps, best, validation)
                if callback is not None:
                    callback(record, w.detach().cpu())
        finally:
            torch.backends.cudnn.benchmark = cudnn_benchmark
            for p, flag in zip(self.model.parameters(), flags):
                p.requires_grad_(flag)
            self.model.train(was_training)

        seconds = time.perf_counter() - t0
        skipped = list(train.skipped)  # always empty for in-memory sets
        selected = None
        if best is not None:
            w, selected = best["watermark"], best["step"]
        watermark = Watermark(w, self.metadata(image_shape))
        watermark.metadata["history"] = [r.to_dict() for r in history]
        if selected is not None:
            watermark.metadata["selected_step"] = selected
        if skipped:
            watermark.metadata["skipped_images"] = skipped
        return FitResult(watermark, history, seconds, images_seen, start_epoch * steps + start_step,
                         selected, validation, skipped)

    @torch.no_grad()
    def check_classes(self, train: ImageSource, device: torch.device) -> None:
        """Labels must index the model's outputs (one forward pass of a blank image tells how many there are)."""
        was_training = self.model.training
        try:
            outputs = self.model.eval().to(device)(torch.zeros((1, *train.image_shape), device=device)).shape[-1]
        finally:
            self.model.train(was_training)
        largest = int(train.labels.max())
        if largest >= outputs:
            raise WatermarkOODError(f"{train.name}: labels go up to {largest} but the model has {outputs} outputs; "
                                    "use a model trained on these classes (or give it their number)")

    @torch.no_grad()
    def resolve_margins(self, train: ImageSet, cfg: FitConfig, device: torch.device,
                        limit: int = MARGIN_IMAGES) -> FitConfig:
        """Margins left unset become quantiles of the model's own ID-training statistics at w = 0.

        hinge: logsumexp quantiles ``m_in_quantile`` / ``m_out_quantile``. features: the penultimate features'
        cosine distance to the nearest ID class mean (the class means become ``self.anchors``), at the mirrored
        quantiles. Deterministic (a fixed seeded subset, fp32) and rounded to 1e-3 (1e-5 for distances), so a
        resumed fit finds the same config.
        """
        lse_margins = cfg.objective in LSE_MARGIN_OBJECTIVES
        if not lse_margins and cfg.objective != "features":
            return cfg
        if lse_margins and cfg.m_in is not None and cfg.m_out is not None:
            return cfg
        subset = train
        if len(train) > limit:
            order = torch.randperm(len(train), generator=generator(torch.device("cpu"), cfg.seed, MARGIN_TAG))
            subset = train.subset(order[:limit].sort().values)
        was_training = self.model.training
        model = self.model.eval().to(device)
        hook = PenultimateHook(model) if cfg.objective == "features" else None
        lse, kept_rows = [], []
        try:
            for start, (kept, pixels) in zip(range(0, len(subset), 500), subset.batches(500)):
                x = self.normalization(pixels.to(device))
                lse.append(torch.logsumexp(model(x).float(), dim=1).cpu())
                kept_rows.append(kept + start)
        finally:
            features = hook.close() if hook is not None else None
            self.model.train(was_training)
        if lse_margins:
            values, q_in, q_out, digits = torch.cat(lse).double(), cfg.m_in_quantile, cfg.m_out_quantile, 3
        else:
            unit = features / features.norm(dim=1, keepdim=True).clamp(min=1e-12)
            labels = subset.labels[torch.cat(kept_rows)]
            means = torch.stack([unit[labels == k].mean(0) for k in labels.unique()])
            self.anchors = (means / means.norm(dim=1, keepdim=True).clamp(min=1e-12)).to(device)
            values = class_mean_distance(unit, self.anchors.cpu()).double()
            q_in, q_out, digits = 1.0 - cfg.m_in_quantile, 1.0 - cfg.m_out_quantile, 5
        m_in = cfg.m_in if cfg.m_in is not None else round(float(values.quantile(q_in)), digits)
        m_out = cfg.m_out if cfg.m_out is not None else round(float(values.quantile(q_out)), digits)
        if (m_out < m_in) != lse_margins or m_in == m_out:
            raise WatermarkOODError(f"{cfg.objective} margins from ID data are not ordered (m_in={m_in}, "
                                    f"m_out={m_out}); set --m-in/--m-out or other quantiles")
        return cfg.replace(m_in=m_in, m_out=m_out)

    def _prepare_model(self, device: torch.device) -> Callable[[torch.Tensor], Any]:
        """The model as the objective needs it: logits, or (penultimate features, logits) for ``features``."""
        module: torch.nn.Module = prepare_model(self.model, self.execution, device)
        if self.config.objective == "features":
            split = _FeaturesAndLogits(*split_at_head(module)).eval()
            for p in split.parameters():
                p.requires_grad_(False)
            probe = torch.randn((2, *self.input_shape), device=device)
            with torch.no_grad():
                if not torch.allclose(split(probe)[1], module(probe), rtol=1e-3, atol=1e-3):
                    raise WatermarkOODError("the features objective needs a model whose last linear layer is its last "
                                            "operation")
            module = split
        if self.execution.compile:
            return torch.compile(module)
        return module


def bad_image_stop(error: BadImage, epoch: int, step: int, checkpoint: Path | None) -> WatermarkOODError:
    """The one-line stop for an unreadable training image: which file, and how to go on."""
    where = f"epoch {epoch + 1}, step {step + 1}"
    if checkpoint is None:
        return WatermarkOODError(f"{error} (at {where})")
    return WatermarkOODError(f"{error} (at {where}); the fit saved {checkpoint}: replace the file and run the same "
                             "command to resume there")


class _FeaturesAndLogits(torch.nn.Module):
    """(penultimate features, logits) in one differentiable pass."""

    def __init__(self, body: torch.nn.Module, head: torch.nn.Linear) -> None:
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x).flatten(1)
        return features, self.head(features)


def graphs_apply(execution: ExecutionConfig, device: torch.device) -> bool:
    """CUDA graphs are used on CUDA unless switched off, compiled, or under torchrun (eager all-reduces)."""
    return (execution.cuda_graphs and device.type == "cuda" and not execution.compile
            and not distributed.is_distributed())


class StepGraph:
    """One SAM step captured as a CUDA graph over static input buffers, replayed for each batch.

    Randomness (order, flips, noise) stays outside the graph, so replays follow
    the same (seed, epoch, step) streams as eager steps; alpha is a device scalar
    so the learning-rate schedule needs no re-capture.
    """

    def __init__(self, step: Callable[..., tuple[torch.Tensor, torch.Tensor]], w: torch.Tensor,
                 x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor) -> None:
        self.w, self.x, self.y, self.noise = w.clone(), x.clone(), y.clone(), noise.clone()
        self.alpha = torch.zeros((), device=w.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside capture (cuDNN autotuning, allocator)
            for _ in range(3):
                step(self.w, self.x, self.y, self.noise, self.alpha)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss, self.w_next = step(self.w, self.x, self.y, self.noise, self.alpha)

    def __call__(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
                 alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        self.w.copy_(w)
        self.x.copy_(x)
        self.y.copy_(y)
        self.noise.copy_(noise)
        self.alpha.fill_(alpha)
        self.graph.replay()
        return self.loss.clone(), self.w_next.clone()


def fit_watermark(model: torch.nn.Module, train: ImageSource, normalization: Normalization,
                  config: FitConfig | None = None, execution: ExecutionConfig | None = None,
                  **fit_kwargs: Any) -> FitResult:
    """One-call API: ``fit_watermark(model, train_set, CIFAR, get_preset('cifar10-msp').config())``."""
    return WatermarkLearner(model, normalization, config, execution).fit(train, **fit_kwargs)
