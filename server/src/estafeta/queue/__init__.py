"""The outbound queue: durable entries, delivery over SMTP, DSNs, MTA-STS."""
