"""Test helper: assert that a file is a real PNG picture with content."""

from __future__ import annotations

from pathlib import Path


def png_ok(path: Path, min_bytes: int = 15_000) -> None:
    """A real PNG with content: signature, size, and a share of dark (ink) pixels that means
    axes, labels and curves — neither a blank nor a black image."""
    from matplotlib.image import imread

    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > min_bytes
    img = imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 500
    ink = (img[..., :3].mean(axis=2) < 0.6).mean()
    assert 0.005 < ink < 0.5
