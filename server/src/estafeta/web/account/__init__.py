"""The account pages (issue 20, section 3): what a user changes without an admin.

- :mod:`.pages`: :class:`AccountPages`, the handler ``Site`` hands every
  path it does not serve itself;
- :mod:`.sessions`: login sessions in memory, cookies and CSRF tokens;
- :mod:`.vacation`: the away message and forwarding as a Sieve script.

Templates (Jinja2, autoescaped) and the style sheet are package data.
"""

from estafeta.web.account.pages import AccountPages
from estafeta.web.account.sessions import SessionLimits

__all__ = ["AccountPages", "SessionLimits"]
