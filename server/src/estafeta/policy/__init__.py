"""Mail authentication policy: SPF, DKIM, DMARC, ARC and Authentication-Results.

Pure functions over facts; DNS comes in as an ``estafeta.dns.Resolver``.
"""
