"""``tls-exporter`` channel binding data of a TLS connection (rfc9266).

rfc9266:2: the binding data is the TLS exporter (rfc8446:7.5) with the label
"EXPORTER-Channel-Binding", no context, 32 bytes. Python's ssl module has no
exporter API (up to 3.13), so this module calls OpenSSL's
``SSL_export_keying_material`` through ctypes, on the ``SSL *`` behind the
connection's ``ssl.SSLObject`` (asyncio) or ``ssl.SSLSocket``:

- ``obj._sslobj`` is CPython's ``_ssl._SSLSocket``, whose C struct
  (``PySSLSocket`` in ``Modules/_ssl.c``, 3.11 to 3.13) starts with
  ``PyObject_HEAD``, then ``PyObject *Socket``, then ``SSL *ssl``;
- the functions are looked up through the ``_ssl`` extension module itself,
  so they come from the very libssl CPython uses (not another one on the
  path);
- before the pointer is trusted, ``SSL_get_finished`` and
  ``SSL_get_peer_finished`` read through it must give what CPython's own
  ``get_channel_binding("tls-unique")`` gives for that connection.

Anything unexpected (another Python implementation or build, a pointer that
does not check out, OpenSSL refusing) gives None: the caller then does not
offer SCRAM-SHA-256-PLUS on that connection. Only TLS 1.3 connections get
binding data: rfc9266:3 allows tls-exporter on TLS 1.2 only with the
extended master secret, which Python cannot tell us about.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
import sys
import sysconfig
import threading
from typing import Any

log = logging.getLogger("estafeta.tls")

LABEL = b"EXPORTER-Channel-Binding"  # rfc9266:2
LENGTH = 32  # rfc9266:2
_FINISHED_MAX = 64
_SUPPORTED = ((3, 11), (3, 12), (3, 13))

_lock = threading.Lock()
_library: Any = None
_loaded = False


def _load() -> Any:
    """libssl's functions as CPython's _ssl sees them, or None."""
    global _library, _loaded
    with _lock:
        if _loaded:
            return _library
        _loaded = True
        if (
            sys.implementation.name != "cpython"
            or sys.version_info[:2] not in _SUPPORTED
            or sysconfig.get_config_var("Py_GIL_DISABLED")
            or hasattr(sys, "gettotalrefcount")  # debug build: another object header
        ):
            return None
        try:
            import _ssl

            path = getattr(_ssl, "__file__", None)
            lib = ctypes.CDLL(path) if path else ctypes.CDLL(None)
            export = lib.SSL_export_keying_material
            export.restype = ctypes.c_int
            export.argtypes = [
                ctypes.c_void_p,
                ctypes.c_char_p,
                ctypes.c_size_t,
                ctypes.c_char_p,
                ctypes.c_size_t,
                ctypes.c_char_p,
                ctypes.c_size_t,
                ctypes.c_int,
            ]
            for name in ("SSL_get_finished", "SSL_get_peer_finished"):
                function = getattr(lib, name)
                function.restype = ctypes.c_size_t
                function.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        except (OSError, AttributeError, ImportError) as exc:
            log.info("tls-exporter unavailable: %s", exc)
            return None
        _library = lib
        return lib


def _ssl_pointer(sslobj: Any) -> int | None:
    """The ``SSL *`` inside a ``_ssl._SSLSocket`` (see the module doc)."""
    if type(sslobj).__name__ != "_SSLSocket" or type(sslobj).__module__ not in ("_ssl", "ssl"):
        return None
    word = ctypes.sizeof(ctypes.c_void_p)
    base = id(sslobj)
    # PyObject_HEAD: ob_refcnt, ob_type; a sanity check of the layout.
    if ctypes.c_void_p.from_address(base + word).value != id(type(sslobj)):
        return None
    pointer = ctypes.c_void_p.from_address(base + 3 * word).value
    return int(pointer) if pointer else None


def _finished(function: Any, pointer: int) -> bytes:
    buffer = ctypes.create_string_buffer(_FINISHED_MAX)
    size = int(function(pointer, buffer, _FINISHED_MAX))
    return buffer.raw[: min(size, _FINISHED_MAX)]


def exporter(connection: ssl.SSLObject | ssl.SSLSocket | None) -> bytes | None:
    """The rfc9266 tls-exporter binding data of a TLS 1.3 connection whose
    handshake is done, or None when it cannot be had safely."""
    if connection is None:
        return None
    try:
        if connection.version() != "TLSv1.3":
            return None
        unique = connection.get_channel_binding("tls-unique")
    except (ValueError, ssl.SSLError, AttributeError):
        return None
    lib = _load()
    sslobj = getattr(connection, "_sslobj", None)
    if lib is None or sslobj is None or not unique:
        return None
    pointer = _ssl_pointer(sslobj)
    if pointer is None:
        return None
    # The pointer must be this connection's SSL: same Finished messages.
    if unique not in (
        _finished(lib.SSL_get_finished, pointer),
        _finished(lib.SSL_get_peer_finished, pointer),
    ):
        log.info("tls-exporter unavailable: SSL pointer does not check out")
        return None
    out = ctypes.create_string_buffer(LENGTH)
    # rfc9266:2 no context: use_context = 0.
    if lib.SSL_export_keying_material(pointer, out, LENGTH, LABEL, len(LABEL), None, 0, 0) != 1:
        return None
    return out.raw
