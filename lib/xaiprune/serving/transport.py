"""How the processes of a run reach each other, and only they: loopback by default, and a per-run secret.

**The store.** The processes of a run share a small key-value store (the config, who is up, heartbeats,
gloo's rendezvous). On one host (:func:`xaiprune.serving.launcher.launch`, and AgileNN's two processes) it is a
file in a folder only this user can open (:data:`STORE_ENV`, :func:`private_store`): no socket at all, and the
operating system keeps every other user out. Across hosts it is rank 0's TCP store, which listens on ``listen``
only (default :data:`LOOPBACK`): torch's TCPStore listens on every interface when it opens its own socket,
whatever host it is given, so rank 0 binds the socket itself and hands it over. A TCP store has no
authentication, and any client can list its keys, so the values this code writes are signed (below).

**gloo** binds to the interface named by ``GLOO_SOCKET_IFNAME``; for a loopback run it is set to the loopback
interface (a different interface set by the user is refused). A run across hosts sets it, on each host, to the
interface the others reach.

**The secret.** Every process of a run reads the same token from :data:`TOKEN_ENV` (:func:`new_token` draws one
per run; the launchers set it for their processes). From it:

- every value this code writes to the store carries a keyed code of its key and value (:class:`SignedStore`); a
  value without the run's code is refused and logged, as if absent (heartbeat counters and gloo's own keys
  carry none: on a TCP store a process that reaches the port can disturb who looks alive or stop the run from
  starting, never change an answer);
- rank 0 publishes a check value (a keyed hash of a fixed text, which reveals nothing of the token); a process
  started with another token finds it different and is refused with the reason;
- every message carries a keyed BLAKE2b code of its header and payload (:func:`xaiprune.serving.wire.set_key`);
  a message that does not carry the run's code is refused and logged by its receiver.

Nothing is encrypted: across hosts, run on a network the ward trusts (the messages carry images and activations).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import hmac
import os
import secrets
import socket
import tempfile
from pathlib import Path

import torch.distributed as dist

from xaiprune.serving import sockets, wire

LOOPBACK = "127.0.0.1"
TOKEN_ENV = "XAIPRUNE_TOKEN"
STORE_ENV = "XAIPRUNE_STORE"         # the path of a file store (one host); unset: rank 0's TCP store
CHECK_KEY = "xaiprune/token-check"   # the one public key: a keyed hash that shows whether a token is the run's
MIN_TOKEN = 16                       # characters


class StartupError(RuntimeError):
    """This process could not join the run; the message says why and what to check."""


def new_token() -> str:
    """A fresh secret for one run (128 random bits, hex)."""
    return secrets.token_hex(16)


def run_token(environ=os.environ) -> str:
    """The run's secret from :data:`TOKEN_ENV`; StartupError naming the variable when it is missing or short."""
    token = environ.get(TOKEN_ENV, "")
    if len(token) < MIN_TOKEN:
        raise StartupError(f"{TOKEN_ENV} is {'not set' if not token else 'shorter than %d characters' % MIN_TOKEN}: "
                           "every process of a run needs the same secret (launch() draws one per run; for processes "
                           "started by hand export the same value on every host, e.g. python -c 'import secrets; "
                           "print(secrets.token_hex(16))')")
    return token


def derive(token: str, purpose: str) -> bytes:
    """A key for one use (store prefix, check value, messages) derived from the run's token."""
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).digest()


def prefix(token: str) -> str:
    """The prefix of every store key of the run (a namespace: two runs never share a key; not a secret)."""
    return f"xaiprune/{derive(token, 'store')[:8].hex()}"


def check_value(token: str) -> bytes:
    return derive(token, "check")[:16].hex().encode()


def loopback_interface() -> str | None:
    """The name of this machine's loopback interface (``lo`` on Linux, ``lo0`` on macOS), if it has one."""
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    return min(names, key=len) if names else None


def bind_gloo(listen: str, environ=os.environ) -> None:
    """Make gloo listen on the loopback interface for a loopback run; StartupError if ``GLOO_SOCKET_IFNAME`` names
    another (a run across hosts passes its address as ``listen`` and sets the variable itself)."""
    lo, chosen = loopback_interface(), environ.get("GLOO_SOCKET_IFNAME")
    if not sockets.is_loopback_host(listen) or lo is None:
        return
    if chosen and chosen != lo:
        raise StartupError(f"GLOO_SOCKET_IFNAME={chosen} but the run listens on {listen} (loopback): unset it, or pass "
                           "this host's address as --listen for a run across hosts")
    environ["GLOO_SOCKET_IFNAME"] = lo


def private_store() -> Path:
    """The path of a new file store in a folder only this user can open (mode 700); the caller removes the folder."""
    return Path(tempfile.mkdtemp(prefix="xaiprune-run-")) / "store"


def _file_store(path: str):
    folder = Path(path).parent
    info = folder.stat() if folder.is_dir() else None
    if info is None or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise StartupError(f"{STORE_ENV}={path}: expected a file in an existing folder of this user that others cannot "
                           "open (mode 700)")
    return dist.FileStore(str(path), -1)


class SignedStore:
    """The run's view of its store for this code's own keys (under the run's prefix).

    Every value :meth:`set` writes carries a keyed code of its key and value; :meth:`get` returns a value only with
    the run's code (StoreRefused otherwise, logged) and :meth:`check` counts a key without it as absent. ``add``
    (heartbeat counters) and ``wait`` pass through. ``raw`` is the prefixed store gloo rendezvous through.
    """

    def __init__(self, raw, key: bytes, who: str = ""):
        self.raw, self.key, self.who, self.refused = raw, key, who, set()

    @classmethod
    def of(cls, raw, token: str, who: str = "") -> "SignedStore":
        """The signed view of ``raw`` (the run's prefixed store) under the run's ``token``."""
        return cls(raw, derive(token, "values"), who)

    def _code(self, k: str, v: bytes) -> bytes:
        return hmac.new(self.key, k.encode() + b"\0" + v, hashlib.sha256).hexdigest()[:32].encode()

    def _open(self, k: str, stored: bytes) -> bytes | None:
        v, _, c = stored.rpartition(b"|")
        if hmac.compare_digest(c, self._code(k, v)):
            return v
        if k not in self.refused:
            self.refused.add(k)
            print(f"{self.who}refused store key {k}: not written with this run's secret", flush=True)
        return None

    def set(self, k: str, v) -> None:
        v = v.encode() if isinstance(v, str) else bytes(v)
        self.raw.set(k, v + b"|" + self._code(k, v))

    def get(self, k: str) -> bytes:
        v = self._open(k, self.raw.get(k))
        if v is None:
            raise StoreRefused(f"store key {k}: not written with this run's secret")
        return v

    def check(self, keys) -> bool:
        return all(self.raw.check([k]) and self._open(k, self.raw.get(k)) is not None for k in keys)

    def wait(self, keys, timeout: dt.timedelta) -> None:
        self.raw.wait(keys, timeout)

    def add(self, k: str, n: int) -> int:
        return self.raw.add(k, n)


class StoreRefused(RuntimeError):
    """A store value that does not carry the run's code."""


def listening_socket(listen: str, port: int) -> int:
    """A socket bound to ``listen``:``port`` and listening; returns its file descriptor (for the store)."""
    sock = socket.socket(socket.AF_INET6 if ":" in listen else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listen, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"MASTER_PORT={port} is already in use on this host; choose another port") from None
        raise StartupError(f"could not listen on {listen}:{port}: {exc.strerror} (check --listen)") from None
    return sock.detach()


def _tcp_store(host: str, port: int, world: int, rank: int, limit: dt.timedelta, listen: str):
    if rank != 0:
        return dist.TCPStore(host, port, world, is_master=False, timeout=limit)
    fd = listening_socket(listen, port)
    try:
        return dist.TCPStore(listen, port, world, is_master=True, timeout=limit, master_listen_fd=fd)
    except BaseException:
        with contextlib.suppress(OSError):  # the store may have closed it already
            os.close(fd)
        raise


def open_store(host: str, port: int, world: int, rank: int, timeout: float, token: str, listen: str = LOOPBACK,
               store_file: str | None = None):
    """The run's store: the file ``store_file`` (one host), else rank 0's TCP store (listening on ``listen`` only) or
    a client of it at ``host``; returned as the run's prefixed view (gloo's rendezvous goes through it).

    Rank 0 publishes the token's check value; another rank compares it with its own and is refused (StartupError)
    when they differ. Raises StartupError with the reason when the store cannot be made or reached.
    """
    limit = dt.timedelta(seconds=timeout)
    where = f"the store file {store_file}" if store_file else f"{host}:{port}"
    try:
        raw = _file_store(store_file) if store_file else _tcp_store(host, port, world, rank, limit, listen)
        if rank == 0:
            raw.set(CHECK_KEY, check_value(token))
        else:
            raw.wait([CHECK_KEY], limit)
    except dist.DistError as exc:
        text = str(exc).splitlines()[0][:200]
        if rank == 0:
            raise StartupError(f"not every worker reached {listen}:{port} within {timeout:g} s ({text}); "
                               f"WORLD_SIZE={world} processes must be started") from None
        raise StartupError(f"no coordinator answered at {where} within {timeout:g} s (check MASTER_ADDR "
                           "and MASTER_PORT, and that rank 0 runs and is reachable)") from None
    if rank != 0 and not hmac.compare_digest(raw.get(CHECK_KEY), check_value(token)):
        raise StartupError(f"refused by the run at {where}: this process's {TOKEN_ENV} is not the run's "
                           "(every process of a run needs the same secret)")
    return dist.PrefixStore(prefix(token), raw)


def connect(host: str, port: int, token: str, timeout: dt.timedelta, store_file: str | None = None) -> SignedStore:
    """Another client of the run's store (a heartbeat's own connection), as the run's signed view."""
    raw = _file_store(store_file) if store_file else \
        dist.TCPStore(host, port, is_master=False, timeout=timeout, wait_for_workers=False)
    return SignedStore.of(dist.PrefixStore(prefix(token), raw), token)


def rendezvous(host: str, port: int, world: int, rank: int, timeout: float, token: str, listen: str = LOOPBACK,
               store_file: str | None = None) -> SignedStore:
    """Open the run's store (:func:`open_store`) and join the gloo group on ``listen``'s interface, each within
    ``timeout`` s; every message of this process is signed with the run's key from then on. Returns the run's
    signed view of the store."""
    bind_gloo(listen)
    store = open_store(host, port, world, rank, timeout, token, listen, store_file)
    wire.set_key(derive(token, "wire"))
    try:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=dt.timedelta(seconds=timeout))
    except (RuntimeError, dist.DistError) as exc:
        raise StartupError(f"could not connect to every other rank within {timeout:g} s "
                           f"({str(exc).splitlines()[0][:200]}); every host must reach the others' addresses "
                           "(GLOO_SOCKET_IFNAME picks the interface), and all need the same secret") from None
    return SignedStore.of(store, token, who=f"rank {rank}: ")
