"""Put this folder on PYTHONPATH to make every network attempt of a process fail and be logged to
$NETGUARD_LOG: the offline tests use it to prove a stage does not touch the network. Each process
that loads it appends its command line to $NETGUARD_LOADED, so that a test can prove the guard ran in
the stage (an empty log proves nothing when the guard never loaded)."""
import os
import socket

_log = os.environ.get("NETGUARD_LOG", os.devnull)
_connect = socket.socket.connect


def _record(what: str) -> None:
    with open(_log, "a") as f:
        f.write(what + "\n")


def _getaddrinfo(host, *args, **kwargs):
    _record(f"getaddrinfo {host}")
    raise socket.gaierror(socket.EAI_NONAME, "network disabled by tests/netguard")


def _guarded_connect(self, address):
    if self.family == socket.AF_UNIX:
        return _connect(self, address)
    _record(f"connect {address}")
    raise OSError("network disabled by tests/netguard")


socket.getaddrinfo = _getaddrinfo
socket.socket.connect = _guarded_connect

if os.environ.get("NETGUARD_LOADED"):  # only once the guard is in place
    try:
        with open("/proc/self/cmdline", "rb") as _f:
            _argv = _f.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        import sys
        _argv = " ".join(getattr(sys, "orig_argv", []))
    with open(os.environ["NETGUARD_LOADED"], "a") as _f:
        _f.write(f"{os.getpid()} {_argv}\n")
