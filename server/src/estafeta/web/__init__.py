"""The HTTP side of estafeta: ``[listen] http`` (80) and ``https`` (443).

- :mod:`estafeta.web.connection`: one HTTP/1.1 connection (h11 frames it,
  the limits are ours): keep-alive, HEAD, conditional GET, security headers,
  access log lines;
- :mod:`estafeta.web.listener`: accepting, counting per client address,
  TLS (with ACME's TLS-ALPN-01 certificate when one is being validated);
- :mod:`estafeta.web.site`: the routes — MTA-STS policies, client
  autoconfiguration, ``/healthz``, ``/metrics``, ACME HTTP-01, redirects;
- :mod:`estafeta.web.clientconfig`: Thunderbird autoconfig, Outlook
  autodiscover and Apple configuration profiles.
"""
