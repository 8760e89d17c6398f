"""Point labels without overlap: a small greedy label placer (no extra dependency).

For each point, in order, try offsets on rings around it (right, left, above, below, then
diagonals, further out) and keep the first whose estimated text box overlaps neither a marker
nor an already placed label nor a text already on the axes (e.g. a reference line's label) and
stays inside the axes. When every candidate collides, the one
with the least overlap is used (and counted). Call it after the figure layout is final.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection

_CHAR_WIDTH_EM = 0.62  # conservative mean glyph width of DejaVu Sans, in em
_LINE_HEIGHT_EM = 1.25
_MARKER_PX = 5.0  # half-size of the obstacle box around each point, in pixels
_RADII_PT = (3.0, 8.0, 14.0, 22.0, 32.0, 44.0)
_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1))


def _overlap_area(box: np.ndarray, others: np.ndarray) -> float:
    """Total overlap area of ``box`` (4,) = (x0, y0, x1, y1) with each row of ``others`` (K, 4)."""
    if others.size == 0:
        return 0.0
    w = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    h = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    return float((np.clip(w, 0, None) * np.clip(h, 0, None)).sum())


def _label_size(lines: Sequence[str], size_px: float) -> tuple[float, float]:
    """Estimated pixel (width, height) of a text of ``lines`` at ``size_px`` pixels per em."""
    width = _CHAR_WIDTH_EM * size_px * max(len(line) for line in lines) + 2.0
    return width, _LINE_HEIGHT_EM * size_px * len(lines)


def _points_and_markers(
    ax: Axes, xs: Sequence[float], ys: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions (n, 2) of the points and their obstacle boxes (n, 4)."""
    ax.get_xlim(), ax.get_ylim()  # apply pending autoscaling before mapping data to pixels
    pts = ax.transData.transform(np.column_stack([xs, ys]).astype(float)).reshape(-1, 2)
    return pts, np.concatenate([pts - _MARKER_PX, pts + _MARKER_PX], axis=1)


def _text_boxes(ax: Axes, px_per_pt: float) -> np.ndarray:
    """Estimated pixel boxes (K, 4) of the texts already on ``ax`` (same glyph estimate)."""
    boxes = []
    for text in ax.texts:
        content = text.get_text()
        if not content or not text.get_visible():
            continue
        x, y = text.get_transform().transform(text.get_position())
        width, height = _label_size(content.split("\n"), text.get_fontsize() * px_per_pt)
        ha, va = text.get_horizontalalignment(), text.get_verticalalignment()
        x0 = x if ha == "left" else x - width if ha == "right" else x - width / 2
        y0 = y if va in ("bottom", "baseline") else y - height if va == "top" else y - height / 2
        boxes.append([x0, y0, x0 + width, y0 + height])
    return np.reshape(np.array(boxes, dtype=float), (-1, 4))


def place_line_label(
    ax: Axes, y: float, text: str, xs: Sequence[float], ys: Sequence[float], *, fontsize: float = 6
) -> None:
    """Label a horizontal reference line at ``y`` at whichever end (right or left, above or
    below the line) overlaps the fewest of the points ``xs, ys``. Call after the layout is final
    and before :func:`place_labels`, which then avoids this label too."""
    _, markers = _points_and_markers(ax, xs, ys)
    frame = ax.get_window_extent()
    line_y = ax.transData.transform((0.0, y))[1]
    width, height = _label_size([text], fontsize * ax.figure.dpi / 72.0)
    pad = 0.01 * frame.width
    best: tuple[float, float, str, str] | None = None
    for ha, va in (("right", "bottom"), ("left", "bottom"), ("right", "top"), ("left", "top")):
        x0 = frame.x1 - pad - width if ha == "right" else frame.x0 + pad
        y0 = line_y if va == "bottom" else line_y - height
        box = np.array([x0, y0, x0 + width, y0 + height])
        outside = box[1] < frame.y0 or box[3] > frame.y1
        cost = _overlap_area(box, markers) + (1e6 if outside else 0.0)
        if best is None or cost < best[0]:
            best = (cost, 0.99 if ha == "right" else 0.01, ha, va)
    assert best is not None
    _, x_axes, ha, va = best
    ax.text(
        x_axes,
        y,
        text,
        transform=ax.get_yaxis_transform(),
        ha=ha,
        va=va,
        fontsize=fontsize,
        color="0.3",
    )


def place_labels(
    ax: Axes,
    xs: Sequence[float],
    ys: Sequence[float],
    labels: Sequence[str],
    *,
    fontsize: float = 6.5,
) -> int:
    """Annotate every point of ``ax`` with its label, avoiding overlaps.

    Args:
        ax: axes whose limits and position are final.
        xs, ys: data coordinates of the points; labels: one text per point.
        fontsize: label size in points.

    Returns:
        The number of labels that could only be placed with some overlap.
    """
    fig = ax.figure
    px_per_pt = fig.dpi / 72.0
    pts, markers = _points_and_markers(ax, xs, ys)  # (n, 2) pixels, (n, 4) boxes
    frame = ax.get_window_extent()
    fixed = _text_boxes(ax, px_per_pt)  # texts drawn before the labels
    placed: list[np.ndarray] = []
    leaders: list[np.ndarray] = []  # (2, 2) pixel segments from a point to its far label
    collisions = 0
    order = np.argsort(pts[:, 0])  # left to right: labels of dense clusters fan out evenly
    for i in order:
        text = str(labels[i])
        width, height = _label_size([text], fontsize * px_per_pt)
        others = np.concatenate([np.delete(markers, i, axis=0), fixed, np.reshape(placed, (-1, 4))])
        best: tuple[float, np.ndarray, tuple[float, float, int, int]] | None = None
        for radius in _RADII_PT:
            for dx, dy in _DIRECTIONS:
                off = np.array([dx, dy], dtype=float) * radius / np.hypot(dx, dy) * px_per_pt
                anchor = pts[i] + off
                x0 = anchor[0] if dx > 0 else anchor[0] - width if dx < 0 else anchor[0] - width / 2
                y0 = (
                    anchor[1]
                    if dy > 0
                    else anchor[1] - height
                    if dy < 0
                    else anchor[1] - height / 2
                )
                box = np.array([x0, y0, x0 + width, y0 + height])
                outside = (
                    box[0] < frame.x0 or box[2] > frame.x1 or box[1] < frame.y0 or box[3] > frame.y1
                )
                cost = _overlap_area(box, others) + (1e6 if outside else 0.0)
                if best is None or cost < best[0]:
                    best = (cost, box, (off[0] / px_per_pt, off[1] / px_per_pt, dx, dy))
                if cost == 0.0:
                    break
            if best is not None and best[0] == 0.0:
                break
        assert best is not None
        cost, box, (ox, oy, dx, dy) = best
        collisions += cost > 0.0
        placed.append(box)
        ax.annotate(
            text,
            xy=(xs[i], ys[i]),
            xytext=(ox, oy),
            textcoords="offset points",
            ha="left" if dx > 0 else "right" if dx < 0 else "center",
            va="bottom" if dy > 0 else "top" if dy < 0 else "center",
            fontsize=fontsize,
            color="0.15",
            annotation_clip=False,
        )
        if np.hypot(ox, oy) > 10:
            leaders.append(np.array([pts[i], pts[i] + np.array([ox, oy]) * px_per_pt]))
    if leaders:  # one cheap collection instead of a FancyArrowPatch per label
        segments = [ax.transData.inverted().transform(seg) for seg in leaders]
        lines = LineCollection(segments, colors="0.55", linewidths=0.4, zorder=1)
        ax.add_collection(lines, autolim=False)
    return collisions
