"""The training side of the socket: a buffer that ``log()`` appends to, and a flusher thread.

``add`` encodes an entry into the current batch (C code, no syscall) and returns. The flusher
thread frames the batch every ``flush_interval`` seconds or when it is full, sends it to the
daemon with one ``sendall``, and keeps it until the daemon acknowledges it as durable. After a
lost connection or a daemon restart it reconnects (starting a daemon when none runs) and sends
again every batch not yet acknowledged; the daemon drops the ones it already has, by
``(writer, seq)``. The buffer is bounded: when un-acknowledged data passes ``max_buffer``
bytes, ``add`` waits (policy "block", the default) or drops the entry and counts it ("drop").
"""

from __future__ import annotations

import collections
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings

import msgspec

from .contracts import discovery
from . import _native as codec
from .contracts.errors import TransportError
from ._native.constants import RECORD_EVENT
from .contracts.protocol import (
    LENGTH,
    MAX_FRAME,
    PROTOCOL_VERSION,
    Ack,
    Batch,
    Done,
    Event,
    Hello,
    Refused,
    StatusQuery,
    Welcome,
    encode_event,
    pack,
    server_decoder,
)


def _plain(obj):
    """msgspec hook for config and summary values: array scalars and arrays, paths."""
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(
        f"cannot store a {type(obj).__name__} in a run's config or summary: use numbers, strings, "
        f"lists and dicts of them"
    )


_event_data_encoder = msgspec.msgpack.Encoder(enc_hook=_plain)
# an event's data must fit one WAL record with the event's envelope (writer, seq, kind) around it
_MAX_EVENT_DATA = codec.constants.MAX_RECORD_SIZE - 1024


class Refusal(TransportError):
    """The daemon answered the hello with a refusal: retrying cannot help."""


def connect(path: str, timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError:
        s.close()
        raise
    s.settimeout(None)
    return s


def daemon_status(info: dict, timeout: float = 5.0) -> dict:
    """The running daemon's status (runs, writers, offsets), asked over its socket."""
    sock = connect(info["socket"], timeout)
    try:
        sock.settimeout(timeout)
        sock.sendall(pack(StatusQuery()))
        reply = _read_frame(sock)
    finally:
        sock.close()
    return reply.status


def spawn_daemon(folder: str, daemon_args=()) -> None:
    """Start a daemon for ``folder`` in its own session; it outlives this process."""
    logf = open(os.path.join(folder, "daemon.log"), "ab")
    try:
        subprocess.run(
            [sys.executable, "-m", "trackside.daemon", "--dir", folder, "--detach", *daemon_args],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            cwd="/",
            close_fds=True,
            timeout=30,
        )
    finally:
        logf.close()


def ensure_daemon(folder: str, timeout: float = 15.0, daemon_args=()) -> socket.socket:
    """A connection to the host's daemon, starting one when none answers."""
    path = discovery.socket_path(folder)
    try:
        return connect(path)
    except OSError:
        pass
    spawn_daemon(folder, daemon_args)
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            return connect(path)
        except OSError as e:
            if time.monotonic() > deadline:
                raise TransportError(
                    f"no trackside daemon answered on {path} within {timeout:.0f} s ({e}); "
                    f"see {os.path.join(folder, 'daemon.log')}"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class Client:
    """One writer's link to the daemon for one run. ``add`` is called by the training code."""

    answer_timeout = 30.0  # seconds a daemon may take to answer a hello before it is tried again

    def __init__(
        self,
        run_id: str,
        root: str,
        run_info: dict,
        *,
        rank: int = 0,
        flush_interval: float = 0.02,
        batch_entries: int = 4096,
        batch_bytes: int = 1 << 20,
        max_buffer: int = 256 << 20,
        buffer_policy: str = "block",
        folder: str | None = None,
        reconnect_timeout: float = 60.0,
    ):
        if buffer_policy not in ("block", "drop"):
            raise ValueError(f"buffer_policy must be 'block' or 'drop', not {buffer_policy!r}")
        self.run_id = run_id
        self.root = root
        self.run_info = run_info
        self.rank = rank
        self.flush_interval = flush_interval
        self.batch_entries = batch_entries
        self.batch_bytes = batch_bytes
        self.max_buffer = max_buffer
        self.buffer_policy = buffer_policy
        self.folder = folder or discovery.daemon_dir()
        self.reconnect_timeout = reconnect_timeout
        self.dropped = 0
        self.welcome: Welcome | None = None
        self._init_state()

    def _init_state(self) -> None:
        self.writer = random.getrandbits(62) + 1
        # re-entrant: a SIGTERM handler (main thread) may finish the run while the code it
        # interrupted holds this lock
        self._lock = threading.RLock()  # guards the encoder, events and the un-acked map
        self._acked = threading.Condition(self._lock)
        self._enc = codec.BatchEncoder()
        self._events: list[tuple[str, object]] = []
        self._seq = 0
        self._unacked: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._unacked_bytes = 0
        self._outbox: list[tuple[int, bytes]] = []  # framed, not yet sent
        self._lost = False
        self._acked_seq = 0
        self._done_seq = 0
        self._wake = threading.Event()
        self._closing = False
        self._error: str | None = None
        self._sock: socket.socket | None = None
        self._gen = 0  # connection generation: a reader thread of an old socket stays quiet
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._pid = os.getpid()

    # -- the caller's side -----------------------------------------------------------------------

    def add(self, step, commit, time_us: int, values: dict, payload=None) -> None:
        """Encode one entry into the current batch; raises TypeError/OverflowError for bad values."""
        if self._error is not None:
            raise TransportError(self._error)
        if self._thread is None:
            self.start()  # a forked child's first use of the run it inherited
        if self._unacked_bytes > self.max_buffer and not self._wait_for_room():
            return
        with self._lock:
            enc = self._enc
            try:
                n = enc.add(step, commit, time_us, values, payload)
            except codec.RecordTooLarge:
                if not len(enc):
                    raise  # too large alone: refused, and the batch is as it was
                self._frame_batch()  # the entries before it go out in a batch of their own
                n = enc.add(step, commit, time_us, values, payload)
            full = n >= self.batch_entries or enc.nbytes >= self.batch_bytes
            if full:
                # framed here, not by the flusher: while this thread logs, the flusher waits
                # for the GIL for milliseconds and batches grew to 4x the size, which the daemon
                # merges and stores slower per entry; one call in batch_entries pays for it
                # (~0.1 ms for 4,096 entries of 10 floats), and its bytes count against max_buffer
                self._frame_batch()
        if full and not self._wake.is_set():  # the flusher sends what is framed
            self._wake.set()

    def _wait_for_room(self) -> bool:
        if self.buffer_policy == "drop":
            self.dropped += 1
            if self.dropped == 1:
                warnings.warn(
                    f"trackside: the send buffer is full ({self.max_buffer} bytes not yet acknowledged); "
                    f"dropping entries and counting them (buffer_policy='drop')",
                    stacklevel=4,
                )
            return False
        with self._acked:
            while self._unacked_bytes > self.max_buffer and self._error is None:
                self._wake.set()
                self._acked.wait(0.1)
        if self._error is not None:  # the writer failed while this call waited: say so now
            raise TransportError(self._error)
        return True

    def event(self, kind: str, data, ordered: bool = True) -> None:
        """Queue a run-level change (config, summary, define_metric ...).

        ``ordered`` events take their place between the entries logged before and after them
        (a ``define_metric`` applies to what follows it); unordered ones (console lines) ride
        with the next batch. ``data`` is encoded here, so a value that cannot be stored raises
        TypeError in the caller instead of stopping the flusher."""
        if self._error is not None:
            raise TransportError(self._error)
        raw = msgspec.Raw(_event_data_encoder.encode(data))
        if len(raw) > _MAX_EVENT_DATA:
            raise codec.RecordTooLarge(
                f"{kind} too large: {len(raw)} bytes encoded, over the record limit of {codec.constants.MAX_RECORD_SIZE}; "
                f"keep big values in files (trackside.Artifact)"
            )
        if self._thread is None and kind != "finish":
            self.start()
        with self._lock:
            if ordered:
                if len(self._enc):
                    self._frame_batch()
                self._frame_event(kind, raw)
            else:
                self._events.append((kind, raw))
        if not self._wake.is_set():
            self._wake.set()

    def start(self) -> None:
        """Connect (starting a daemon if needed) and start the flusher; raises TransportError."""
        with self._start_lock:
            if self._thread is not None:
                return
            self._connect()
            thread = threading.Thread(target=self._flusher, name="trackside-flusher", daemon=True)
            thread.start()
            self._thread = thread

    def finish(self, timeout: float = 120.0) -> bool:
        """Send everything and wait until the daemon has it durable and stored; True if so."""
        if self._thread is None:  # never connected (a forked child that did not log): nothing to send
            return True
        if self._error is not None:
            self.close()
            return False
        self.event("finish", {"exit_code": getattr(self, "exit_code", 0)})
        target = self._seq_after_flush()
        deadline = time.monotonic() + timeout
        with self._acked:
            while self._done_seq < target and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.set()
                self._acked.wait(min(left, 0.05))
            ok = self._done_seq >= target
        self.close()
        return ok

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until everything added so far is durable at the daemon (at the run's durability
        level): True once it is, False when ``timeout`` seconds (None: no limit) pass first.
        Raises TransportError when the writer failed (the daemon refused it, or could not be
        reached again within the reconnect timeout)."""
        if self._error is not None:
            raise TransportError(self._error)
        if self._thread is None:
            return True
        target = self._seq_after_flush()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._acked:
            while self._acked_seq < target and self._error is None:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                self._wake.set()
                self._acked.wait(0.05)
            if self._acked_seq < target:
                raise TransportError(self._error)
            return True

    def logged_seq(self) -> int:
        """The seq of the batch that will hold everything added so far (the one being built
        counts as the next); 0 when nothing was added."""
        with self._lock:
            return self._seq + (1 if len(self._enc) else 0)

    def wait_acked(self, seq: int, stop: threading.Event | None = None) -> bool:
        """Wait until the daemon acknowledged batches through ``seq`` (durable), the writer
        failed, or ``stop`` is set; True when acknowledged. Frames nothing (``flush`` does)."""
        with self._acked:
            while self._acked_seq < seq and self._error is None and not (stop is not None and stop.is_set()):
                self._acked.wait(0.05)
            return self._acked_seq >= seq

    def _seq_after_flush(self) -> int:
        """Frame what was added so far; the seq of the last batch that holds it."""
        self._take()
        self._wake.set()
        return self._seq

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                # shutdown, not just close: it wakes the ack reader blocked in recv on this
                # socket, and only then does the daemon see the connection end
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    # -- the flusher thread ----------------------------------------------------------------------

    def _flusher(self) -> None:
        """Send what is framed, reconnect when the link is lost. Never dies silently: whatever
        stops it is kept in ``_error``, which the caller's next log(), flush() or finish() raises."""
        try:
            _block_signals()
            while self._error is None:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                if self._lost:
                    self._lost = False
                    self._reconnect()
                try:
                    self._send_pending()
                except OSError:
                    self._reconnect()
                if self._closing:
                    return
        except BaseException as e:  # a bug must not silently stop logging: say so, in the caller
            self._fail(f"the trackside flusher failed: {type(e).__name__}: {e}")

    def _take(self) -> None:
        """Frame what is pending as batches with the next sequence numbers, into the outbox."""
        with self._lock:
            if len(self._enc):
                self._frame_batch()
            events, self._events = self._events, []
            for kind, data in events:
                self._frame_event(kind, data)

    def _frame_batch(self) -> None:
        """Frame the current batch into the outbox (caller holds the lock)."""
        self._queue(self._enc.take(self.writer, self._seq + 1))

    def _frame_event(self, kind: str, data) -> None:
        """Frame one event record into the outbox (caller holds the lock)."""
        self._queue(codec.frame(RECORD_EVENT, encode_event(Event(self.writer, self._seq + 1, kind, data))))

    def _queue(self, record: bytes) -> None:
        # the seq moves only once its record exists: a record that could not be framed leaves
        # no gap in the writer's seqs
        self._seq += 1
        self._unacked[self._seq] = record
        self._unacked_bytes += len(record)
        self._outbox.append((self._seq, record))

    def _send_pending(self) -> None:
        self._take()
        with self._lock:
            records, self._outbox = self._outbox, []
        if records and self._sock is not None:
            self._send(self._sock, records)

    def _send(self, sock, records) -> None:
        """Send ``(seq, record)`` batches on a connection: one syscall for all of them."""
        sock.sendall(b"".join(pack(Batch(seq, rec)) for seq, rec in records))

    # -- connection ------------------------------------------------------------------------------

    def _connect(self) -> None:
        sock = ensure_daemon(self.folder)
        try:
            sock.settimeout(self.answer_timeout)  # a daemon that takes the hello and hangs is retried
            sock.sendall(
                pack(
                    Hello(PROTOCOL_VERSION, self.run_id, self.writer, os.getpid(), self.rank, self.root, self.run_info)
                )
            )
            msg = _read_frame(sock)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        if isinstance(msg, Refused):
            sock.close()
            raise Refusal(f"the trackside daemon refused run {self.run_id}: {msg.reason}")
        if not isinstance(msg, Welcome):
            sock.close()
            raise TransportError(f"the trackside daemon answered {type(msg).__name__} to hello")
        self.welcome = msg
        resend, gen = self._welcomed(msg.acked_seq)
        if resend:
            self._send(sock, resend)
        self._sock = sock
        threading.Thread(target=self._reader, args=(sock, gen), name="trackside-acks", daemon=True).start()

    def _welcomed(self, acked_seq: int) -> tuple[list, int]:
        """A (re)connection was welcomed: free what the daemon already holds; returns every batch
        still un-acknowledged, to send again (the outbox is a subset of them), and the new
        connection generation."""
        with self._acked:
            self._ack(acked_seq)
            resend = list(self._unacked.items())
            self._outbox.clear()
            self._gen += 1
            # a loss the old connection's reader reported is this reconnect's: do not do it twice
            # (a second reconnect sent the daemon's Done for this writer to a closed connection)
            self._lost = False
            return resend, self._gen

    def _reconnect(self) -> None:
        old, self._sock = self._sock, None
        if old is not None:
            try:
                old.close()
            except OSError:
                pass
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.05
        while self._error is None and not self._closing:
            try:
                self._connect()
                return
            except TransportError as e:
                if isinstance(e, Refusal) or time.monotonic() > deadline:
                    self._fail(str(e))
                    return
            except Exception as e:  # a daemon dying mid-hello, a reset, a daemon that cannot start
                if time.monotonic() > deadline:
                    self._fail(
                        f"lost the trackside daemon and could not reconnect within {self.reconnect_timeout:.0f} s "
                        f"({type(e).__name__}: {e})"
                    )
                    return
            # backoff with jitter: many ranks of a host must not knock on a new daemon in step
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    def _reader(self, sock: socket.socket, gen: int) -> None:
        """Read acks until the connection ends; any failure (an EOF, a reset, a frame that does
        not decode) counts as a lost link, which the flusher reconnects."""
        try:
            _block_signals()
            while True:
                msg = _read_frame(sock)
                with self._acked:
                    if gen != self._gen:
                        return
                    if isinstance(msg, Ack):
                        self._ack(msg.seq)
                    elif isinstance(msg, Done):
                        self._done_seq = max(self._done_seq, msg.seq)
                        self._acked.notify_all()
                    elif isinstance(msg, Refused):
                        self._error = f"the trackside daemon closed this writer's connection: {msg.reason}"
                        self._acked.notify_all()
                        return
        except Exception:
            with self._acked:  # checked and set under the lock: a reconnect that won meanwhile clears nothing
                lost = gen == self._gen and not self._closing
                if lost:
                    self._lost = True  # the flusher reconnects and resends what is not acked
            if lost:
                self._wake.set()
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _ack(self, seq: int) -> None:
        """Free every batch up to ``seq`` (caller holds the lock)."""
        if seq > self._acked_seq:
            self._acked_seq = seq
        while self._unacked:
            first = next(iter(self._unacked))
            if first > seq:
                break
            self._unacked_bytes -= len(self._unacked.pop(first))
        self._acked.notify_all()

    @property
    def error(self) -> str | None:
        """Why this writer failed (retrying cannot help), or None."""
        return self._error

    def _fail(self, message: str) -> None:
        with self._acked:
            self._error = message
            self._acked.notify_all()

    def after_fork(self) -> None:
        """In a forked child: a new writer of the same run, with nothing inherited in flight."""
        if self._sock is not None:
            try:
                os.close(self._sock.detach())  # the parent's connection stays the parent's
            except OSError:
                pass
        self._init_state()  # it connects on first use: most forked children never log


def _block_signals() -> None:
    """Keep SIGTERM and SIGINT off this thread. The kernel hands a process signal to any thread
    that does not block it; Python only runs handlers in the main thread, so a signal landing
    here would wait until the main thread next runs Python code (an hour-long sleep, say)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


def _read_frame(sock: socket.socket):
    head = _recv_exactly(sock, 4)
    (n,) = LENGTH.unpack(head)
    if n > MAX_FRAME:
        raise ConnectionAbortedError(f"the trackside daemon sent a frame of {n} bytes")
    try:
        return server_decoder.decode(_recv_exactly(sock, n))
    except msgspec.DecodeError as e:
        raise ConnectionAbortedError(f"the trackside daemon sent a malformed frame: {e}") from None


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            # an OSError like every other lost link, so that one handler retries them all
            raise ConnectionAbortedError("the trackside daemon closed the connection")
        buf += chunk
    return bytes(buf)
