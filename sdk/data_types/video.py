"""``Video``: frames (numpy) encoded as a gif or mp4, or a video file, stored as one file."""

from __future__ import annotations

import os
import tempfile

from ._media import Media, extension, numpy, read_input, to_uint8
from .base import need

VIDEO_FORMATS = ("gif", "mp4", "webm", "ogg")


class Video(Media):
    """A video: a numpy array of frames, time x channels x height x width (channels 1, 3 or 4;
    a 5-D batch x time x channels x height x width is tiled into a grid), encoded at ``fps``
    frames per second as ``format`` ("gif" by default, "mp4", "webm", "ogg"); or a video file
    (path or open file with ``format=``) in one of those formats, stored byte for byte.

    Raises ValueError for an array of another shape or an unsupported format,
    FileNotFoundError for a missing file. Encoding needs imageio (gif) and imageio-ffmpeg (mp4,
    webm, ogg): ``pip install 'trackside[media]'``.
    """

    _type = "video-file"

    def __init__(self, data_or_path, caption: str | None = None, fps: int | None = None, format: str | None = None):
        if caption is not None and not isinstance(caption, str):
            raise TypeError(f"caption must be a str, not {type(caption).__name__}")
        self.caption = caption
        self.fps = fps
        self.width = self.height = self.frames = None
        fmt = format.lower().lstrip(".") if format else None
        if fmt is not None and fmt not in VIDEO_FORMATS:
            raise ValueError(f"Video format {format!r} is not one of {', '.join(VIDEO_FORMATS)}")
        if isinstance(data_or_path, Video):
            src = data_or_path
            self._data, self._ext = src._data, src._ext
            self.fps, self.width, self.height, self.frames = src.fps, src.width, src.height, src.frames
            if caption is None:
                self.caption = src.caption
            return
        if isinstance(data_or_path, str) or hasattr(data_or_path, "read") or hasattr(data_or_path, "__fspath__"):
            self._data, fname = read_input(data_or_path, "Video")
            ext = extension(fname) or fmt
            if ext not in VIDEO_FORMATS:
                raise ValueError(
                    f"Video: {fname or 'the file'} is not a {', '.join(VIDEO_FORMATS)} video"
                    + ("" if fname else " (pass format= for a file object without a name)")
                )
            self._ext = ext
            return
        self.fps = 4 if fps is None else fps
        if not isinstance(self.fps, (int, float)) or isinstance(self.fps, bool) or self.fps <= 0:
            raise ValueError(f"fps must be a positive number, not {fps!r}")
        self._ext = fmt or "gif"
        frames = _frames(data_or_path)
        self.frames, self.height, self.width = frames.shape[:3]
        self._data = _encode(frames, self._ext, self.fps)

    def _fields(self) -> dict:
        out = super()._fields()
        for k in ("fps", "width", "height", "frames"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out

    @classmethod
    def from_json(cls, obj: dict, source: str) -> "Video":
        self = cls._blank(obj, source)
        self.fps, self.width, self.height, self.frames = (obj.get(k) for k in ("fps", "width", "height", "frames"))
        return self


def _frames(data):
    """time x height x width x channels uint8 frames from time x channels x height x width."""
    np = numpy()
    if hasattr(data, "detach") and hasattr(data, "cpu"):
        data = data.detach().cpu().numpy()
    arr = np.asarray(data)
    shape = arr.shape
    if arr.ndim == 5:  # batch x time x C x H x W: tile the batch into a grid, row by row
        b, t, c, h, w = shape
        cols = int(np.ceil(np.sqrt(b)))
        rows = int(np.ceil(b / cols))
        grid = np.zeros((rows * cols, t, c, h, w), dtype=arr.dtype)
        grid[:b] = arr
        arr = grid.reshape(rows, cols, t, c, h, w).transpose(2, 3, 0, 4, 1, 5).reshape(t, c, rows * h, cols * w)
    if arr.ndim != 4 or arr.shape[1] not in (1, 3, 4) or 0 in arr.shape:
        raise ValueError(
            f"Video array of shape {shape} is not a video: use time x channels x height x width "
            f"(channels 1, 3 or 4), or batch x time x channels x height x width"
        )
    frames = to_uint8(arr).transpose(0, 2, 3, 1)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return np.ascontiguousarray(frames)


def _encode(frames, fmt: str, fps) -> bytes:
    iio = need("imageio.v3", "media")
    if fmt == "gif":
        return iio.imwrite("<bytes>", frames, extension=".gif", duration=1000.0 / fps, loop=0)
    need("imageio_ffmpeg", "media")
    np = numpy()
    frames = frames[..., :3]  # the ffmpeg codecs used here have no alpha
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:  # yuv420p needs even sizes: pad by repeating the last row/column
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    codec = {"mp4": "libx264", "webm": "libvpx", "ogg": "libtheora"}[fmt]
    fd, path = tempfile.mkstemp(suffix="." + fmt)
    os.close(fd)
    try:
        iio.imwrite(
            path,
            frames,
            extension="." + fmt,
            fps=fps,
            codec=codec,
            macro_block_size=1,
            pixelformat="yuv420p",
            plugin="FFMPEG",
        )
        with open(path, "rb") as f:
            return f.read()
    except Exception as e:
        raise ValueError(f"cannot encode the video as {fmt} ({e}); try format='gif'") from e
    finally:
        os.unlink(path)
