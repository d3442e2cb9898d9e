"""Put this folder on PYTHONPATH to make every network attempt of a process fail and be logged to
$NETGUARD_LOG: the offline tests use it to prove a stage does not touch the network."""
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
