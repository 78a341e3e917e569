"""The abuse battery: open relay, SMTP smuggling, STARTTLS injection,
resource limits and TLS defaults, each against a real estafeta process (a
package, so its conftest does not shadow server/tests/conftest.py)."""
