"""ACME inside the server (issue 20 §2): certificates obtained and renewed by
the server itself, with TLS-ALPN-01 on the ``https`` listener or HTTP-01 on
the ``http`` listener.

* estafeta.acme.manager: ``AcmeSettings``, ``CertificateManager`` (the task);
* estafeta.acme.pending: ``Challenges``, the responses the listeners serve;
* estafeta.acme.hello: reading SNI and ALPN from a peeked ClientHello;
* estafeta.acme.files: the state directory, its layout and crash ordering;
* estafeta.acme.dane: the DANE-EE key rollover (standby key, what DNS
  showed of it, when it may be used); estafeta.acme.rollover: the manager's
  side of it.
"""

from estafeta.acme.hello import (
    ClientHello,
    ClientHelloError,
    answer_tls_alpn,
    client_hello,
    peek_client_hello,
)
from estafeta.acme.manager import AcmeSettings, CertificateManager
from estafeta.acme.pending import ACME_TLS_ALPN, HTTP01_PREFIX, Challenges

__all__ = [
    "ACME_TLS_ALPN",
    "HTTP01_PREFIX",
    "AcmeSettings",
    "CertificateManager",
    "Challenges",
    "ClientHello",
    "ClientHelloError",
    "answer_tls_alpn",
    "client_hello",
    "peek_client_hello",
]
