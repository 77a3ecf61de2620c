"""Videos and a live window for watching an agent: mp4 / gif files, text overlays, panels.

* :class:`VideoWriter` streams frames to ``.mp4`` (H.264 through imageio-ffmpeg's bundled
  ffmpeg) or ``.gif`` (imageio's Pillow plugin, which keeps the frames until the end: prefer
  mp4 for long videos). The file is written under a temporary name beside the destination and
  renamed when complete, so a kill never leaves a truncated video that looks finished.
* :func:`annotate`, :func:`panels`, :func:`upscale`: compose what is shown (frames side by side,
  a header line with the score and the step), drawn with pygame's default font (no display
  needed).
* :class:`LiveWindow`: a pygame window at a fixed frame rate, as CarRacing's ``human`` mode.

Frames are (H, W, 3) uint8 arrays throughout.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worldmodels.errors import WorldModelsError
from worldmodels.utils.io import TMP_MARK, describe_os_error, fsync_dir

__all__ = [
    "VIDEO_SUFFIXES",
    "VideoWriter",
    "write_video",
    "upscale",
    "fit",
    "annotate",
    "panels",
    "has_display",
    "LiveWindow",
]

VIDEO_SUFFIXES = (".mp4", ".gif")
_BLOCK = 16  # H.264 encoders and players want sizes in multiples of 16


# ------------------------------------------------------------------------------ files


def _tmp_video_path(path: Path) -> Path:
    """``name.tmp-<pid>.mp4`` beside ``path``: the encoder picks the container from the
    suffix, and :func:`~worldmodels.utils.io.remove_stale_tmp` recognises the mark."""
    return path.with_name(f"{path.stem}{TMP_MARK}{os.getpid()}{path.suffix}")


def _pad_to_block(frame: np.ndarray) -> np.ndarray:
    """Pad (black, bottom/right) to multiples of 16 pixels rather than let ffmpeg resample."""
    h, w = frame.shape[:2]
    ph, pw = -h % _BLOCK, -w % _BLOCK
    if ph or pw:
        frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)))
    return frame


class VideoWriter:
    """Append frames, get a complete ``.mp4`` or ``.gif`` at ``path`` on :meth:`close`.

    ::

        with VideoWriter("out.mp4", fps=50) as video:
            for frame in frames:          # (H, W, 3) uint8, all the same size
                video.append(frame)

    Leaving the ``with`` block by an exception discards the partial file (the destination is
    untouched). mp4 frames are padded to multiples of 16 pixels.

    :param path: destination, ending in ``.mp4`` or ``.gif``.
    :param fps: frames per second (CarRacing renders at 50); a GIF stores whole
        hundredths of a second per frame.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float = 50.0) -> None:
        self.path = Path(path)
        self.suffix = self.path.suffix.lower()
        if self.suffix not in VIDEO_SUFFIXES:
            raise WorldModelsError(f"cannot write {self.path}: the video must end in .mp4 or "
                                   ".gif")
        if not fps > 0:
            raise WorldModelsError(f"fps must be > 0, got {fps}")
        self.fps = float(fps)
        self.frames = 0
        self.shape: tuple[int, ...] | None = None
        self._tmp = _tmp_video_path(self.path)
        self._writer: Any = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WorldModelsError(describe_os_error(e, self.path.parent)) from e

    def _open(self, frame: np.ndarray) -> None:
        if self.suffix == ".mp4":
            import imageio_ffmpeg

            h, w = frame.shape[:2]
            self._writer = imageio_ffmpeg.write_frames(
                str(self._tmp), (w, h), fps=self.fps, codec="libx264", quality=7,
                pix_fmt_in="rgb24", pix_fmt_out="yuv420p", macro_block_size=1,
                ffmpeg_log_level="error")
            self._writer.send(None)  # start ffmpeg
        else:
            import imageio.v3 as iio

            self._writer = iio.imopen(self._tmp, "w", extension=".gif", plugin="pillow")

    def append(self, frame: np.ndarray) -> None:
        """Add one (H, W, 3) uint8 frame (the first one fixes the size)."""
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frames must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
        if self.suffix == ".mp4":
            frame = _pad_to_block(frame)
        if self.shape is None:
            self.shape = frame.shape
        elif frame.shape != self.shape:
            raise ValueError(f"all frames must have the shape of the first, {self.shape}; "
                             f"got {frame.shape}")
        try:
            if self._writer is None:
                self._open(frame)
            if self.suffix == ".mp4":
                self._writer.send(np.ascontiguousarray(frame))
            else:
                self._writer.write(frame, is_batch=False, duration=round(1000.0 / self.fps),
                                   loop=0)
        except OSError as e:
            self.abort()
            raise WorldModelsError(describe_os_error(e, self.path)) from e
        self.frames += 1

    def close(self) -> Path:
        """Finish the file and rename it into place; returns ``path``."""
        if self._writer is None:
            raise WorldModelsError(f"no frame was written to {self.path}")
        try:
            self._writer.close()
            self._writer = None
            fd = os.open(self._tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._tmp, self.path)
            fsync_dir(self.path.parent)
        except (OSError, RuntimeError) as e:
            self.abort()
            raise WorldModelsError(f"cannot write {self.path}: {e}") from e
        return self.path

    def abort(self) -> None:
        """Stop and delete the partial file."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        with contextlib.suppress(OSError):
            self._tmp.unlink()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path: str | os.PathLike[str], frames: Iterable[np.ndarray],
                fps: float = 50.0) -> Path:
    """Write ``frames`` ((H, W, 3) uint8 each) to ``path`` (.mp4 or .gif), atomically."""
    with VideoWriter(path, fps) as video:
        for frame in frames:
            video.append(frame)
    return Path(path)


# ------------------------------------------------------------------------------ drawing


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor: (H, W, 3) -> (sH, sW, 3)."""
    return frame if scale == 1 else frame.repeat(scale, axis=0).repeat(scale, axis=1)


def fit(frame: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of (H, W, 3) to (size, size, 3)."""
    h, w = frame.shape[:2]
    if (h, w) == (size, size):
        return frame
    rows = (np.arange(size) * h // size).clip(0, h - 1)
    cols = (np.arange(size) * w // size).clip(0, w - 1)
    return frame[rows][:, cols]


_FONTS: dict[int, Any] = {}


def _font(size: int) -> Any:
    """pygame's default font at ``size`` px, or None when pygame's font module is missing.
    Fonts are cached, and made again after ``pygame.quit()`` (closing a CarRacing window,
    say) has invalidated them, whether or not pygame was initialised again since."""
    if _FONTS.get(size) is not None:
        import pygame

        try:
            _FONTS[size].size("x")
        except pygame.error:  # stale after pygame.quit(), even if pygame was started again
            _FONTS.clear()
    if size not in _FONTS:
        try:
            os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
            import pygame

            pygame.font.init()
            _FONTS[size] = pygame.font.Font(None, size)
        except Exception:  # no font support: frames without text rather than no video
            _FONTS[size] = None
    return _FONTS[size]


def _blit_text(image: np.ndarray, text: str, x: int, y: int, size: int,
               color: tuple[int, int, int] = (255, 255, 255), box: bool = False) -> int:
    """Draw ``text`` into ``image`` (in place) at (x, y), on a black box if ``box``;
    returns the text's width."""
    font = _font(size)
    if font is None or not text:
        return 0
    import pygame

    try:
        surface = font.render(text, True, color)
    except pygame.error:  # pygame.quit() (e.g. closing a human-mode env) invalidated it
        _FONTS.pop(size, None)
        font = _font(size)
        if font is None:
            return 0
        surface = font.render(text, True, color)
    rgb = pygame.surfarray.array3d(surface).swapaxes(0, 1)  # (h, w, 3)
    alpha = pygame.surfarray.array_alpha(surface).swapaxes(0, 1)[..., None] / 255.0
    h = max(0, min(rgb.shape[0], image.shape[0] - y))
    w = max(0, min(rgb.shape[1], image.shape[1] - x))
    if box:
        image[max(0, y - 2):y + h + 1, max(0, x - 3):x + w + 3] = 0
    if h and w:
        region = image[y:y + h, x:x + w].astype(np.float32)
        blended = region * (1 - alpha[:h, :w]) + rgb[:h, :w] * alpha[:h, :w]
        image[y:y + h, x:x + w] = blended.round().astype(np.uint8)
    return rgb.shape[1]


def annotate(frame: np.ndarray, items: Sequence[str], height: int = 32,
             font_size: int = 22) -> np.ndarray:
    """``frame`` with a black header bar of ``height`` px above it holding ``items`` (e.g.
    ``["real", "step 120", "score 45.3"]``) spaced along one line: (H + height, W, 3)."""
    h, w = frame.shape[:2]
    out = np.zeros((h + height, w, 3), np.uint8)
    out[height:] = frame
    x = 8
    y = max(0, (height - int(font_size * 0.7)) // 2)
    for item in items:
        x += _blit_text(out, item, x, y, font_size) + 18
    return out


def panels(frames: Sequence[np.ndarray | None], labels: Sequence[str],
           size: int = 192) -> np.ndarray:
    """Frames side by side, each resized to ``size`` x ``size`` with its label in the corner;
    ``None`` is a grey panel (e.g. no prediction yet): (size, len(frames) * size, 3)."""
    out = np.zeros((size, size * len(frames), 3), np.uint8)
    for i, (frame, label) in enumerate(zip(frames, labels)):
        panel = out[:, i * size:(i + 1) * size]
        if frame is None:
            panel[:] = 64
        else:
            panel[:] = fit(np.asarray(frame), size)
        if i:
            panel[:, 0] = 255  # a thin white separator
        _blit_text(panel, label, 6, 4, 18, (255, 255, 0), box=True)  # panel: a view of out
    return out


# ------------------------------------------------------------------------------ window


def has_display() -> bool:
    """Whether a window can be opened: a desktop OS, or X11/Wayland with a real SDL driver."""
    if os.environ.get("SDL_VIDEODRIVER", "").lower() in ("dummy", "offscreen"):
        return False
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class LiveWindow:
    """A pygame window showing frames at ``fps`` (as CarRacing's ``human`` render mode).

    :meth:`show` returns False once the user closed the window (or pressed Escape or q).
    """

    def __init__(self, title: str, width: int, height: int, fps: float = 50.0) -> None:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame

        pygame.display.init()
        pygame.display.set_caption(title)
        self._pygame = pygame
        self.screen = pygame.display.set_mode((width, height))
        self.clock = pygame.time.Clock()
        self.fps = fps
        self.open = True

    def show(self, frame: np.ndarray) -> bool:
        pygame = self._pygame
        if not self.open:
            return False
        for event in pygame.event.get():
            if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN
                                             and event.key in (pygame.K_ESCAPE, pygame.K_q)):
                self.close()
                return False
        surface = pygame.surfarray.make_surface(np.ascontiguousarray(frame.swapaxes(0, 1)))
        if surface.get_size() != self.screen.get_size():
            self.screen = pygame.display.set_mode(surface.get_size())
        self.screen.blit(surface, (0, 0))
        pygame.display.flip()
        self.clock.tick(self.fps)
        return True

    def close(self) -> None:
        if self.open:
            self._pygame.display.quit()
            self.open = False
