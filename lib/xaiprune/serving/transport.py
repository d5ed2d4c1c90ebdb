"""How the processes of a run reach each other, and only they: loopback by default, and a per-run secret.

**Where a run listens.** Rank 0's TCP store and every rank's gloo device listen on one address, ``listen``
(default :data:`LOOPBACK`: only processes of this machine can reach the run). torch's TCPStore listens on every
interface when it opens its own socket, whatever host it is given, so rank 0 binds the socket itself and hands it
over. gloo binds to the interface named by ``GLOO_SOCKET_IFNAME``; for a loopback run it is set to the loopback
interface unless the user set it. A run across hosts passes this host's address (``--listen``) and, on each host,
``GLOO_SOCKET_IFNAME`` for the interface the others reach.

**The secret.** Every process of a run reads the same token from :data:`TOKEN_ENV` (:func:`new_token` draws one
per run; :func:`xaiprune.serving.launcher.launch` sets it for its processes). From it:

- every store key of the run, gloo's own rendezvous keys included, lives under a prefix derived from the token, so
  a process without it can neither read nor write any key the run uses;
- rank 0 publishes a check value (a keyed hash of a fixed text, which reveals nothing of the token) under one
  public key; a process started with another token finds it different and is refused with the reason, instead of
  waiting under a prefix nobody writes;
- every message carries a keyed BLAKE2b code of its header and payload (:func:`xaiprune.serving.wire.set_key`);
  a message that does not carry the run's code is refused and logged by its receiver.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket

import torch.distributed as dist

from xaiprune.serving import wire

LOOPBACK = "127.0.0.1"
TOKEN_ENV = "XAIPRUNE_TOKEN"
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
    """The prefix of every store key of the run."""
    return f"xaiprune/{derive(token, 'store')[:8].hex()}/"


def check_value(token: str) -> bytes:
    return derive(token, "check")[:16].hex().encode()


def is_loopback(host: str) -> bool:
    """``host`` resolves to a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def loopback_interface() -> str | None:
    """The name of this machine's loopback interface (``lo`` on Linux, ``lo0`` on macOS), if it has one."""
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    return min(names, key=len) if names else None


def bind_gloo(listen: str, environ=os.environ) -> None:
    """Make gloo listen on ``listen``'s interface: the loopback one for a loopback run, unless the user chose one."""
    if is_loopback(listen) and not environ.get("GLOO_SOCKET_IFNAME") and loopback_interface():
        environ["GLOO_SOCKET_IFNAME"] = loopback_interface()


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
            raise StartupError(f"MASTER_PORT={port} is already in use on this host; choose another port "
                               "(launch() picks a free one)") from None
        raise StartupError(f"could not listen on {listen}:{port}: {exc.strerror} (check --listen)") from None
    return sock.detach()


def open_store(host: str, port: int, world: int, rank: int, timeout: float, token: str, listen: str = LOOPBACK):
    """Rank 0's store (listening on ``listen`` only) or a client of it at ``host``, as the run's prefixed view.

    Rank 0 publishes the token's check value; another rank compares it with its own and is refused (StartupError)
    when they differ. Raises StartupError with the reason when the store cannot be made or reached.
    """
    limit = dt.timedelta(seconds=timeout)
    try:
        if rank == 0:
            fd = listening_socket(listen, port)
            raw = dist.TCPStore(listen, port, world, is_master=True, timeout=limit, master_listen_fd=fd)
            raw.set(CHECK_KEY, check_value(token))
        else:
            raw = dist.TCPStore(host, port, world, is_master=False, timeout=limit)
    except dist.DistError as exc:
        text = str(exc).splitlines()[0][:200]
        if rank == 0:
            raise StartupError(f"not every worker reached {listen}:{port} within {timeout:g} s ({text}); "
                               f"WORLD_SIZE={world} processes must be started") from None
        raise StartupError(f"no coordinator answered at {host}:{port} within {timeout:g} s (check MASTER_ADDR "
                           "and MASTER_PORT, and that rank 0 runs and is reachable)") from None
    if rank != 0:
        raw.wait([CHECK_KEY], limit)
        if not hmac.compare_digest(raw.get(CHECK_KEY), check_value(token)):
            raise StartupError(f"refused by the run at {host}:{port}: this process's {TOKEN_ENV} is not the run's "
                               "(every process of a run needs the same secret)")
    return dist.PrefixStore(prefix(token), raw)


def connect(host: str, port: int, token: str, timeout: dt.timedelta):
    """Another client of rank 0's store (a heartbeat's own connection), as the run's prefixed view."""
    raw = dist.TCPStore(host, port, is_master=False, timeout=timeout, wait_for_workers=False)
    return dist.PrefixStore(prefix(token), raw)


def rendezvous(host: str, port: int, world: int, rank: int, timeout: float, token: str, listen: str = LOOPBACK):
    """Open the run's store (:func:`open_store`) and join the gloo group on ``listen``'s interface, each within
    ``timeout`` s; every message of this process is signed with the run's key from then on. Returns the store."""
    store = open_store(host, port, world, rank, timeout, token, listen)
    bind_gloo(listen)
    wire.set_key(derive(token, "wire"))
    try:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=dt.timedelta(seconds=timeout))
    except (RuntimeError, dist.DistError) as exc:
        raise StartupError(f"could not connect to every other rank within {timeout:g} s "
                           f"({str(exc).splitlines()[0][:200]}); every host must reach the others' addresses "
                           "(GLOO_SOCKET_IFNAME picks the interface)") from None
    return store
