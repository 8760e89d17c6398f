"""Dataset configuration: the generated dataset (default) or an ImageNet-style folder."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from harness.config.base import Config
from harness.config.model import check_name
from harness.registry import Registry

# source name (DataConfig.source) -> dataset class, called as (cfg, split, cache_dir)
DATA_SOURCES: Registry = Registry(
    "data source",
    lazy={
        "generated": "harness.data.generated:GeneratedDataset",
        "folder": "harness.data.folder:FolderDataset",
    },
)


class DataConfig(Config):
    """Where images come from.

    ``source: generated`` draws a deterministic procedural dataset (no download).
    ``source: folder`` reads ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*``
    (ImageNet layout), with optional foreground masks under ``mask_root`` (same relative
    paths, ``.png``).
    """

    source: str = "generated"  # one of DATA_SOURCES
    root: str | None = None  # folder source: dataset root holding train/ and val/
    mask_root: str | None = None  # folder source: optional masks (same layout, .png)
    resolution: int = Field(32, ge=16, le=512)  # images are (3, resolution, resolution)
    num_classes: int = Field(10, ge=2, le=1000)  # generated: number of classes
    train_images: int = Field(2000, ge=1)  # generated: size of train; folder: cap (per split)
    val_images: int = Field(500, ge=1)  # generated: size of val; folder: cap
    seed: int = Field(0, ge=0)  # generated: the dataset seed
    # generated: the variety of the images (defaults: the full dataset; fewer objects, the home
    # palette always and plain backgrounds make a dataset a small SiT learns in CPU-minutes)
    max_objects: int = Field(3, ge=1, le=3)  # objects per image are drawn from 1..max_objects
    home_palette_prob: float = Field(0.5, ge=0.0, le=1.0)  # images in their class's home palette
    backgrounds: Literal["textured", "gradient", "flat"] = "textured"  # textured: gradients,
    #   noise and stripes; gradient: linear / radial gradients only; flat: one colour
    object_scale: float = Field(1.0, ge=0.5, le=2.0)  # object radii x this (1: 0.22-0.55 of
    #   the half-width; larger objects carry more of the denoising loss)

    @property
    def variety(self) -> dict[str, object]:
        """The variety fields that differ from the full dataset (part of the fingerprint)."""
        full = {
            "max_objects": 3,
            "home_palette_prob": 0.5,
            "backgrounds": "textured",
            "object_scale": 1.0,
        }
        return {k: getattr(self, k) for k, v in full.items() if getattr(self, k) != v}

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        return check_name(value, DATA_SOURCES, "data source") or value

    @model_validator(mode="after")
    def _folder_needs_root(self) -> DataConfig:
        if self.source == "folder" and not self.root:
            raise ValueError(
                "@root: source 'folder' needs 'root' (a directory with train/ and val/)"
            )
        return self


def resolved_data(data: DataConfig) -> DataConfig:
    """``data`` with relative paths made absolute (jobs run elsewhere: the code snapshot)."""
    updates = {
        name: str(Path(value).expanduser().absolute())
        for name in ("root", "mask_root")
        if (value := getattr(data, name)) is not None
    }
    return data.model_copy(update=updates) if updates else data
