"""How any client reaches a ``trackside server``, and the client of its Upload service.

A server URL is ``grpc://HOST:PORT`` (plain) or ``grpcs://HOST:PORT`` (TLS); the port defaults
to 7311. Where a client uploads (``UploadClient``, and so the daemon's ``server=`` setting,
``$TRACKSIDE_SERVER`` and ``trackside sync --to``), a comma-separated list of URLs names the
servers of one tier (several ``trackside server --shared`` on one PostgreSQL database,
docs/multiserver.md): the client moves to the next one when its server is away. The token is the ``token`` argument, else ``$TRACKSIDE_TOKEN``; for ``grpcs://`` the CA
file is ``ca``, else ``$TRACKSIDE_TLS_CA``, else the system's roots. ``UploadClient`` sends WAL
records and files (the daemon's uploader and ``trackside sync`` use it); ``trackside.remote``
reads runs back over the same channel. Imported on first use only (grpc is heavy).
"""

from __future__ import annotations

import os
import re
from typing import Optional, Sequence, Union

import grpc
import msgspec

from trackside.contracts.constants import SERVER_PORT
from trackside.proto.trackside.v1 import trackside_pb2 as pb
from trackside.proto.trackside.v1 import trackside_pb2_grpc as pb_grpc

__all__ = [
    "PermanentUploadError",
    "ServerChannel",
    "TransientUploadError",
    "UploadClient",
    "UploadError",
    "is_server_url",
    "parse_url",
    "server_urls",
]

DEFAULT_PORT = SERVER_PORT
CHUNK = 1024 * 1024  # files go up and down in pieces of this size
MAX_MESSAGE = 64 * 1024 * 1024  # as the server's: a 16 MiB batch with room to spare
SCHEMES = ("grpc://", "grpcs://")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode

# Statuses a retry cannot cure: the uploader stops and says why. Every other status (the
# server down, overloaded, restarting ...) is transient: the WAL keeps the records meanwhile.
PERMANENT = frozenset(
    {"UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "UNIMPLEMENTED"}
)


def is_server_url(text) -> bool:
    """Whether ``text`` names a trackside server (``grpc://`` or ``grpcs://``)."""
    return isinstance(text, str) and text.startswith(SCHEMES)


def parse_url(url: str) -> tuple[str, bool]:
    """``(target, tls)`` for a server URL: ``grpc://host:port`` -> ``("host:port", False)``.
    Raises ValueError naming the accepted forms."""
    m = re.fullmatch(
        r"(grpcs?)://(\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]]+)(?::(\d{1,5}))?/?", url if isinstance(url, str) else ""
    )
    if m is None:
        raise ValueError(f"{url!r} is not a trackside server URL: use grpc://HOST:PORT, or grpcs://HOST:PORT for TLS")
    scheme, host, port = m.groups()
    return f"{host}:{port or DEFAULT_PORT}", scheme == "grpcs"


def server_urls(text: str) -> list[str]:
    """The URLs of ``text``: one server URL, or several separated by commas (the servers of one
    tier). Raises ValueError naming a URL that is not one."""
    urls = [u.strip() for u in text.split(",")] if isinstance(text, str) else [text]
    if not urls or not all(urls):
        raise ValueError(f"{text!r} is not a trackside server URL or a comma-separated list of them")
    for url in urls:
        parse_url(url)
    return list(dict.fromkeys(urls))


class ServerChannel:
    """A channel to one server and the metadata every call carries. gRPC channels are
    thread-safe, and so is this."""

    def __init__(self, url: str, token: Optional[str], ca: Optional[str], timeout: float):
        target, tls = parse_url(url)
        self.url = url
        self.timeout = timeout
        token = token if token is not None else os.environ.get("TRACKSIDE_TOKEN") or None
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
        if tls:
            ca = ca if ca is not None else os.environ.get("TRACKSIDE_TLS_CA") or None
            roots = None
            if ca is not None:
                try:
                    with open(ca, "rb") as f:
                        roots = f.read()
                except OSError as e:
                    raise FileNotFoundError(f"cannot read the CA file {ca} for {url}: {e.strerror}") from None
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots), options)
        else:
            self.channel = grpc.insecure_channel(target, options)

    def close(self) -> None:
        self.channel.close()


# -- uploads ---------------------------------------------------------------------------------------


class UploadError(Exception):
    """An upload the server did not take. ``code``: the gRPC status name ("UNAVAILABLE" ...);
    ``server``: the URL."""

    def __init__(self, message: str, code: str, server: str):
        super().__init__(message)
        self.code = code
        self.server = server


class PermanentUploadError(UploadError):
    """Retrying will not help (a wrong token, a record the server refuses, an old server)."""


class TransientUploadError(UploadError):
    """The server is unreachable, busy or restarting: retry later; nothing was lost."""


def _upload_error(e: grpc.RpcError, url: str, what: str) -> UploadError:
    code = e.code().name if e.code() is not None else "UNKNOWN"
    cls = PermanentUploadError if code in PERMANENT else TransientUploadError
    return cls(f"trackside server {url}: {what} failed: {e.details() or code} ({code})", code, url)


class UploadClient:
    """Sends WAL records and files to a ``trackside server``. Every call blocks until the
    server answers (at most ``timeout`` seconds) and raises PermanentUploadError or
    TransientUploadError when it did not take the upload. Safe to share between threads.

    ``url`` may list several servers of one tier, separated by commas (``server_urls``): calls
    go to one of them, and when it is away (a transient error) the same call goes to the next
    ones in turn, which then stay in use. Only when every server failed does the call raise
    TransientUploadError. Resending is safe: the tier drops records it already holds.
    """

    def __init__(self, url: str, token: Optional[str] = None, ca: Optional[str] = None, *, timeout: float = 60.0):
        self.url = url
        self.urls = server_urls(url)
        self._args = (token, ca, timeout)
        self._conns: dict[str, tuple[ServerChannel, pb_grpc.UploadStub]] = {}
        self._current = 0
        self.failovers = 0  # how often a call moved on to another server
        for u in self.urls:  # a bad CA file or URL raises here, not at the first upload
            self._stub(u)

    @property
    def server(self) -> str:
        """The server calls go to now."""
        return self.urls[self._current]

    def _stub(self, url: str):
        conn = self._conns.get(url)
        if conn is None:
            channel = ServerChannel(url, *self._args)
            conn = self._conns[url] = (channel, pb_grpc.UploadStub(channel.channel))
        return conn

    def _invoke(self, what: str, call):
        """``call(channel, stub)`` on the current server, then on each other one while they fail
        with a transient error."""
        first = self._current
        error: Optional[UploadError] = None
        for i in range(len(self.urls)):
            index = (first + i) % len(self.urls)
            url = self.urls[index]
            conn, stub = self._stub(url)
            try:
                result = call(conn, stub)
            except grpc.RpcError as e:
                error = _upload_error(e, url, what)
                if isinstance(error, PermanentUploadError):
                    raise error from None
                continue
            if index != self._current:
                self._current = index
                self.failovers += 1
            return result
        assert error is not None  # the list holds one URL at least
        raise error

    def _call(self, what: str, method: str, request):
        return self._invoke(
            what, lambda conn, stub: getattr(stub, method)(request, timeout=conn.timeout, metadata=conn.metadata)
        )

    def append(self, run_id: str, info: dict, records: Sequence[bytes]) -> tuple[int, int]:
        """Store framed WAL records of ``run_id`` (in WAL order; ``info``: the run's info, used
        when the run is new). Returns ``(stored, duplicates)``: the records new to the server,
        durable there now, and those it already held. Idempotent: resend a batch freely."""
        request = pb.UploadRequest(run_id=run_id, run_info=_encode(info or {}), records=records)
        reply = self._call(f"uploading {len(records)} records of run {run_id}", "Append", request)
        return reply.stored, reply.duplicates

    def missing_files(self, paths: Sequence[str]) -> list[str]:
        """The ones of ``paths`` (relative to the run root) the server does not hold yet."""
        reply = self._call("asking for missing files", "MissingFiles", pb.MissingFilesRequest(paths=paths))
        return list(reply.paths)

    def put_file(self, path: str, local_file_path: Union[str, os.PathLike]) -> int:
        """Send the file at ``local_file_path`` to be kept at ``path`` (relative to the run
        root); streamed in 1 MiB pieces. Returns the size the server wrote."""

        def chunks(f):
            first = True
            while True:
                data = f.read(CHUNK)
                if not data and not first:
                    return
                yield pb.FileChunk(path=path if first else "", data=data)
                first = False

        with open(local_file_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size

            def put(conn, stub):
                f.seek(0)
                # the server keeps the file only when this many bytes arrived (a cut-off stream
                # looks complete to it otherwise)
                metadata = (*conn.metadata, ("trackside-file-size", str(size)))
                timeout = conn.timeout + size / (10 * CHUNK)  # the deadline grows a second per 10 MiB
                return stub.PutFile(chunks(f), timeout=timeout, metadata=metadata)

            reply = self._invoke(f"sending file {path}", put)
        return reply.bytes

    def status(self) -> dict:
        """The server's status: version, address, its runs and upload counts."""
        return _decode(self._call("asking for status", "Status", pb.StatusRequest()).status)

    def close(self) -> None:
        for conn, _ in self._conns.values():
            conn.close()

    def __enter__(self) -> "UploadClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<UploadClient {self.url}>"
