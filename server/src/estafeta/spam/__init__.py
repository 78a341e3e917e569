"""The built-in learning junk filter (issue 16 section 3).

Per-account token statistics, taught by what users do, and a verdict per
delivered message. The pieces, each described at the top of its module:

* ``extract``  — a message's decoded text, URL hosts and attachment names
  (bounded: 256 KiB of text), ``url_domains`` and ``executable_attachments``
  for the content checks;
* ``tokens``   — the features counted (words, tagged header tokens, URL
  hosts, structure), at most 3,000 per message;
* ``classify`` — Gary Robinson's token probabilities combined with Fisher's
  chi-square method (as SpamBayes and bogofilter), and ``Verdict``;
* ``store``    — the SQLite statistics, one file per account under the
  directory the caller gives, capped and self-repairing;
* ``filter``   — ``JunkFilter``, what the server, IMAP and the CLI call;
* ``readers``  — message file / Maildir / mbox input for bulk training.

Typical use (in worker threads)::

    junk = JunkFilter(data_dir / "spam", SpamSettings(threshold=0.9))
    ex = junk.extract(message_bytes)              # parse once
    verdict = junk.classify(account, ex)          # Verdict; .header_fields()
    domains = url_domains(ex)                     # for the URI block lists
    bad = executable_attachments(ex, extensions)  # reject if non-empty
    junk.learn(account, stored_bytes, spam=True)  # moved into Junk / $Junk
    junk.learn(account, stored_bytes, spam=False) # moved out / $NotJunk
    junk.unlearn(account, stored_bytes)           # a training taken back
    junk.train_from(account, MessageSource(path), spam=True)
"""

from estafeta.spam.classify import Verdict
from estafeta.spam.extract import (
    DEFAULT_EXECUTABLE_EXTENSIONS,
    Extracted,
    executable_attachments,
    extract,
    url_domains,
)
from estafeta.spam.filter import JunkFilter, SpamSettings, TrainReport, message_digest
from estafeta.spam.readers import MessageSource
from estafeta.spam.store import STATS_ERRORS, Outcome, Status
from estafeta.spam.tokens import tokenize

__all__ = [
    "DEFAULT_EXECUTABLE_EXTENSIONS",
    "STATS_ERRORS",
    "Extracted",
    "JunkFilter",
    "MessageSource",
    "Outcome",
    "SpamSettings",
    "Status",
    "TrainReport",
    "Verdict",
    "executable_attachments",
    "extract",
    "message_digest",
    "tokenize",
    "url_domains",
]
