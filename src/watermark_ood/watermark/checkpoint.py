"""Fit checkpoints: enough state to continue a fit exactly where it stopped.

Randomness in the learner is derived from (seed, epoch, step), so the
watermark, the position in the schedule and the history are the whole state;
no RNG state needs saving. Files are written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_bytes

from watermark_ood.core.errors import WatermarkOODError, describe
from watermark_ood.core.fileio import atomic_write_bytes, read_safetensors, remove_stale_temporaries
from watermark_ood.core.schema import check_float, check_int, check_list, check_mapping, check_tensor, fail
from watermark_ood.watermark.config import FitConfig
from watermark_ood.watermark.records import EpochRecord

CHECKPOINT_NAME = "checkpoint.safetensors"


@dataclass
class CheckpointState:
    watermark: torch.Tensor
    epoch: int
    step: int
    history: list["EpochRecord"]
    best: dict[str, Any] | None = None
    validation: list[dict[str, Any]] | None = None


class FitCheckpoint:
    """One checkpoint file in ``directory``, tied to a configuration and a training set size."""

    def __init__(self, directory: str | Path, config: FitConfig, image_shape: tuple[int, ...], num_images: int):
        self.path = Path(directory) / CHECKPOINT_NAME
        self.identity = {
            "config": config.hyperparameters() | {"objective": config.objective},
            "image_shape": list(image_shape),
            "num_images": int(num_images),
        }

    def exists(self) -> bool:
        remove_stale_temporaries(self.path.parent)  # left by a run that was killed while writing
        return self.path.is_file()

    def save(self, w: torch.Tensor, epoch: int, step: int, history: list["EpochRecord"], steps_per_epoch: int,
             best: dict[str, Any] | None = None, validation: list[dict[str, Any]] | None = None) -> None:
        """Position, history, and the best validated watermark so far (when validating)."""
        if step >= steps_per_epoch:
            epoch, step = epoch + 1, 0
        state = {**self.identity, "epoch": epoch, "step": step, "history": [r.to_dict() for r in history],
                 "validation": validation or []}
        tensors = {"watermark": w.detach().to("cpu", torch.float32).contiguous()}
        if best is not None:
            state["best"] = {"step": best["step"], "key": list(best["key"])}
            tensors["best"] = best["watermark"].to(torch.float32).contiguous()
        blob = save_bytes(tensors, metadata={"state": json.dumps(state)})
        atomic_write_bytes(self.path, blob)

    def load(self) -> CheckpointState:

        blob = self.path.read_bytes()
        try:
            tensors, header_metadata = read_safetensors(blob)
            state: dict[str, Any] = json.loads(header_metadata["state"])
            watermark = tensors["watermark"]
        except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways
            raise WatermarkOODError(
                f"{self.path}: unreadable fit checkpoint ({describe(error)}); delete it to start the fit afresh"
            ) from None
        for key, expected in self.identity.items():
            if state.get(key) != expected:
                raise WatermarkOODError(
                    f"{self.path}: checkpoint was made with a different {key} ({state.get(key)} vs {expected}); "
                    "use another output folder or delete the checkpoint to start afresh"
                )
        if not torch.isfinite(watermark).all():
            raise WatermarkOODError(f"{self.path}: checkpoint watermark contains NaN or infinite values")
        try:
            history, best = self._checked(state, tensors, EpochRecord)
        except WatermarkOODError as error:
            raise WatermarkOODError(f"{self.path}: damaged fit checkpoint ({error}); delete it to start the fit "
                                    "afresh") from None
        return CheckpointState(watermark, state["epoch"], state["step"], history, best,
                               state.get("validation", []))

    def _checked(self, state: dict[str, Any], tensors: dict[str, torch.Tensor], record: type):
        """Every field a resumed fit reads: position, history records, the best watermark so far."""

        shape = (1, *self.identity["image_shape"])
        check_tensor("tensor watermark", tensors["watermark"], shape, {})
        check_int("epoch", state.get("epoch"), 0, self.identity["config"].get("epochs"))
        check_int("step", state.get("step"), 0)
        names = {f.name: f for f in fields(record)}
        history = []
        for i, item in enumerate(check_list("history", state.get("history"))):
            item = check_mapping(f"history[{i}]", item)
            unknown = sorted(set(item) - set(names))
            if unknown:
                raise fail(f"history[{i}].{unknown[0]}", "no such field", item[unknown[0]])
            for key, value in item.items():
                if not (value is None and names[key].default is None):
                    (check_int if key in ("epoch", "steps") else check_float)(f"history[{i}].{key}", value)
            try:
                history.append(record(**item))
            except TypeError as error:  # a required field missing
                raise fail(f"history[{i}]", "every field of an epoch record", str(error)) from None
        check_list("validation", state.get("validation", []))
        best = None
        if "best" in state and "best" in tensors:
            saved = check_mapping("best", state["best"])
            check_int("best.step", saved.get("step"), 0)
            for j, value in enumerate(check_list("best.key", saved.get("key"))):
                check_float(f"best.key[{j}]", value, limit=float("inf"))
            check_tensor("tensor best", tensors["best"], shape, {})
            best = {**saved, "watermark": tensors["best"]}
        return history, best

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
