"""``Audio``: a sound clip stored as one file (numpy samples become a WAV)."""

from __future__ import annotations

import io
import numbers
import wave

from ._media import Media, extension, numpy, read_input

AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg", "oga", "m4a", "aac", "aiff", "aif", "opus", "webm")


class Audio(Media):
    """A sound clip: a numpy array of samples with ``sample_rate`` (1-D mono, or 2-D frames x
    channels; floats in -1..1 are stored as 16-bit PCM, int16/int32/uint8 as they are) or an
    audio file (path or open file, stored byte for byte). ``caption``: text shown with it.

    Raises ValueError without ``sample_rate`` for an array, or for an array of another shape;
    FileNotFoundError for a missing file. WAVs are written with the standard library; an array
    needs numpy (``pip install 'trackside[media]'``).
    """

    _type = "audio-file"

    def __init__(self, data_or_path, sample_rate: int | None = None, caption: str | None = None):
        if caption is not None and not isinstance(caption, str):
            raise TypeError(f"caption must be a str, not {type(caption).__name__}")
        self.caption = caption
        self.sample_rate = self.channels = self.duration = None
        if isinstance(data_or_path, Audio):
            src = data_or_path
            self._data, self._ext = src._data, src._ext
            self.sample_rate, self.channels, self.duration = src.sample_rate, src.channels, src.duration
            if caption is None:
                self.caption = src.caption
            return
        if isinstance(data_or_path, str) or hasattr(data_or_path, "read") or hasattr(data_or_path, "__fspath__"):
            self._data, fname = read_input(data_or_path, "Audio")
            ext = extension(fname) or "wav"
            if ext not in AUDIO_FORMATS:
                raise ValueError(f"Audio: {fname} is not an audio file ({', '.join(AUDIO_FORMATS)})")
            self._ext = "wav" if ext == "wave" else ext
            self._read_header(sample_rate)
            return
        if sample_rate is None:
            raise ValueError("Audio from an array needs sample_rate= (samples per second)")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Integral) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive int, not {sample_rate!r}")
        self._data = _wav(data_or_path, int(sample_rate))
        self._ext = "wav"
        self._read_header(None)

    def _read_header(self, sample_rate) -> None:
        if self._ext == "wav":
            try:
                with wave.open(io.BytesIO(self._data)) as w:
                    self.sample_rate, self.channels = w.getframerate(), w.getnchannels()
                    self.duration = w.getnframes() / self.sample_rate if self.sample_rate else None
                return
            except (wave.Error, EOFError):
                pass  # a WAV the stdlib does not read (float samples): soundfile may
        try:
            import soundfile  # optional: soundfile (pip install 'trackside[media]')
        except ImportError:
            self.sample_rate = sample_rate
            return
        try:
            info = soundfile.info(io.BytesIO(self._data))
            self.sample_rate, self.channels, self.duration = info.samplerate, info.channels, info.duration
        except Exception:  # a format libsndfile does not read: the details are informative only
            self.sample_rate = sample_rate

    def _fields(self) -> dict:
        out = super()._fields()
        for k in ("sample_rate", "channels", "duration"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out

    @classmethod
    def from_json(cls, obj: dict, source: str) -> "Audio":
        self = cls._blank(obj, source)
        self.sample_rate, self.channels, self.duration = (
            obj.get("sample_rate"),
            obj.get("channels"),
            obj.get("duration"),
        )
        return self

    def to_numpy(self):
        """The samples of a WAV as floats in -1..1 (frames, or frames x channels)."""
        np = numpy()
        with wave.open(io.BytesIO(self._data)) as w:
            width, channels, raw = w.getsampwidth(), w.getnchannels(), w.readframes(w.getnframes())
        if width == 1:
            arr = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128) / 128
        else:
            dtype = {2: "<i2", 4: "<i4"}.get(width)
            if dtype is None:
                raise ValueError(f"cannot read {8 * width}-bit WAV samples")
            arr = np.frombuffer(raw, dtype).astype(np.float64) / float(2 ** (8 * width - 1))
        return arr.reshape(-1, channels) if channels > 1 else arr


def _wav(data, sample_rate: int) -> bytes:
    np = numpy()
    if hasattr(data, "detach") and hasattr(data, "cpu"):
        data = data.detach().cpu().numpy()
    arr = np.asarray(data)
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise ValueError(f"Audio array of shape {arr.shape} is not a clip: use (frames,) or (frames, channels)")
    channels = 1 if arr.ndim == 1 else arr.shape[1]
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr, nan=0.0)
        pcm, width = np.rint(np.clip(arr, -1.0, 1.0) * 32767).astype("<i2"), 2
    elif arr.dtype == np.int16:
        pcm, width = arr.astype("<i2"), 2
    elif arr.dtype == np.int32:
        pcm, width = arr.astype("<i4"), 4
    elif arr.dtype == np.uint8:
        pcm, width = arr, 1
    else:
        raise TypeError(f"Audio samples must be floats in -1..1, int16, int32 or uint8, not {arr.dtype}")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(sample_rate)
        w.writeframes(np.ascontiguousarray(pcm).tobytes())
    return buf.getvalue()
