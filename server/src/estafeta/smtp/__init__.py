"""SMTP: inbound delivery (MX) on aiosmtpd, with our policy and the store."""
