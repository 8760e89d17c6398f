"""``harness data preview``: look at the study's images and masks, and print dataset numbers.

Writes ``OUT`` (a labelled image grid), ``OUT``'s stem + ``_masks.png`` (the same grid with the
foreground masks tinted red) and + ``.json`` (every number printed).
"""

from __future__ import annotations

import argparse
import io
import math
import time
from pathlib import Path
from typing import Any

from harness.cli import POSITIVE_INT, Command, add_overrides_argument
from harness.cli.tiles import zoom
from harness.errors import ConfigError

LABEL_HEIGHT = 12  # pixels of the caption strip under each tile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    preview = actions.add_parser(
        "preview",
        help="write an image grid and a mask overlay; print dataset statistics",
        description="Write a labelled image grid and a mask overlay; print dataset statistics.",
    )
    preview.add_argument("--out", required=True, type=Path, metavar="PNG", help="grid image path")
    preview.add_argument("--split", default="train", choices=["train", "val"], help="split")
    preview.add_argument(
        "--n", type=POSITIVE_INT, default=64, metavar="N", help="images shown (64)"
    )
    preview.add_argument(
        "--config",
        type=Path,
        metavar="YAML",
        help="a data config file, or any config with a 'data:' section (default: built-in)",
    )
    add_overrides_argument(preview, example="resolution=64", what="a data setting")


def load_data_config(path: Path | None, overrides: list[str]) -> Any:
    """DataConfig from defaults < ``path`` (its ``data:`` section if it has one) < overrides."""
    from harness.config.data import DataConfig
    from harness.config.loader import YamlDoc, load_yaml, validate

    if path is None:
        doc = YamlDoc(path="--set", data={})
    else:
        doc = load_yaml(path)
        if isinstance(doc.data.get("data"), dict):
            section = {key[1:]: line for key, line in doc.lines.items() if key[:1] == ("data",)}
            doc = YamlDoc(path=doc.path, data=doc.data["data"], lines=section)
    return validate(DataConfig, doc, overrides)


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ConfigError(f"--n {args.n}: must be at least 1")
    cfg = load_data_config(args.config, args.overrides)  # before importing torch: fast errors

    from harness.data import build_dataset
    from harness.io import write_bytes, write_json

    ds = build_dataset(cfg, args.split)
    n = min(args.n, len(ds))
    start = time.perf_counter()
    batch = ds.get_batch(range(n))
    seconds = time.perf_counter() - start

    stats = dataset_stats(ds, batch, seconds)
    stats["config"] = cfg.to_dict()
    out: Path = args.out
    masks_out = out.with_name(f"{out.stem}_masks.png")
    stats_out = out.with_suffix(".json")
    grid, overlay = render_grids(batch, ds.class_names)
    for image, path in ((grid, out), (overlay, masks_out)):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        write_bytes(path, buffer.getvalue())
    write_json(stats_out, stats)

    print(f"dataset     {cfg.source} ({ds.split}), fingerprint {stats['fingerprint']}")
    print(f"images      {stats['n_images']} at {ds.resolution}x{ds.resolution} px")
    per_class = stats["images_per_class"]
    print(f"classes     {ds.num_classes} ({per_class['min']}-{per_class['max']} images each)")
    print(f"masks       {'yes' if ds.has_masks else 'no (all-False)'}")
    fg = stats["preview"]["foreground_fraction"]
    print(f"foreground  mean {fg['mean']:.3f} (min {fg['min']:.3f}, max {fg['max']:.3f})")
    print(f"speed       {stats['preview']['images_per_s']:.0f} images/s ({n} loaded)")
    print(f"wrote       {out}, {masks_out}, {stats_out}")
    return 0


def dataset_stats(ds: Any, batch: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Dataset summary plus numbers measured on the previewed ``batch``."""
    images = batch["image"].float() / 255.0  # (B, 3, H, W)
    fg = batch["mask"].float().mean(dim=(1, 2))  # (B,)
    stats = ds.describe()
    stats["preview"] = {
        "n": len(fg),
        "seconds": seconds,
        "images_per_s": len(fg) / max(seconds, 1e-9),
        "pixel_mean_rgb": images.mean(dim=(0, 2, 3)).tolist(),
        "pixel_std_rgb": images.std(dim=(0, 2, 3)).tolist(),
        "foreground_fraction": {
            "mean": float(fg.mean()),
            "min": float(fg.min()),
            "max": float(fg.max()),
        },
        "labels": batch["label"].tolist(),
    }
    return stats


def render_grids(batch: dict[str, Any], class_names: list[str]) -> tuple[Any, Any]:
    """(labelled image grid, same grid with masks tinted red) as PIL images."""
    import numpy as np
    from PIL import Image, ImageDraw

    images = batch["image"].permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
    masks = batch["mask"].numpy()  # (B, H, W)
    tinted = images.astype(np.float32)
    tinted[masks] = 0.45 * tinted[masks] + 0.55 * np.array([255.0, 0.0, 0.0])
    size = images.shape[1]
    tile = size * zoom(size)
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    grids = []
    for pixels in (images, tinted.round().astype(np.uint8)):
        canvas = Image.new("RGB", (cols * tile, rows * (tile + LABEL_HEIGHT)), "white")
        draw = ImageDraw.Draw(canvas)
        for i, (array, label) in enumerate(zip(pixels, batch["label"].tolist())):
            x, y = (i % cols) * tile, (i // cols) * (tile + LABEL_HEIGHT)
            canvas.paste(Image.fromarray(array).resize((tile, tile), Image.NEAREST), (x, y))
            name = class_names[label]
            caption = name if len(name) * 6 <= tile else name[: max(1, tile // 6 - 2)] + ".."
            draw.text((x + 2, y + tile), caption, fill="black")
        grids.append(canvas)
    return grids[0], grids[1]


COMMAND = Command(
    name="data",
    help="look at the dataset: image grid, mask overlay, statistics",
    examples="""
        harness data preview --out grid.png
        harness data preview --out val.png --split val --n 100 --set resolution=64
        harness data preview --out inet.png --set source=folder --set root=/data/imagenet
        harness data preview --out grid.png --config sweeps/cpu-study.yaml
    """,
    add_arguments=add_arguments,
    run=run,
    order=20,
)
