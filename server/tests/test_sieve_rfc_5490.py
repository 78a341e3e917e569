"""RFC 5490 example scripts as test cases.

Of RFC 5490 the server implements "mailbox" (mailboxexists, fileinto
:create); "mboxmetadata" and "servermetadata" are not offered, so their
examples parse and are refused by the validator, naming the extension.
"""

from __future__ import annotations

import pytest
from _sieve import (
    assert_actions,
    compile_ok,
    fileinto,
    keep,
    refuses,
    reject,
    run,
    simple,
)

from estafeta.sieve import SUPPORTED, SieveError, parse

# rfc5490:3.1
MAILBOXEXISTS = """\
require ["fileinto", "reject", "mailbox"];
if mailboxexists "Partners" {
   fileinto "Partners";
} else {
   reject "This message was not accepted by the Mailstore";
}
"""


def test_3_1_mailboxexists() -> None:
    exists = run(MAILBOXEXISTS, simple(), mailboxes={"INBOX", "Partners"})
    assert_actions(exists, [fileinto("Partners")])
    missing = run(MAILBOXEXISTS, simple(), mailboxes={"INBOX", "Partners/Old"})
    assert_actions(missing, [reject("This message was not accepted by the Mailstore")])


@pytest.mark.parametrize(
    ("names", "value"),
    [
        ('"INBOX"', True),
        ('["INBOX", "Lists/dev"]', True),
        ('["INBOX", "Lists/dev", "Nowhere"]', False),  # all must exist
        ('"lists/dev"', False),  # mailbox names are case-sensitive (but INBOX)
    ],
)
def test_3_1_all_listed_mailboxes_must_exist(names: str, value: bool) -> None:
    script = f'require "mailbox";\nif mailboxexists {names} {{ discard; }}\n'
    result = run(script, simple(), mailboxes={"INBOX", "Lists", "Lists/dev"})
    assert [a.to_json()["action"] for a in result.actions] == (["discard"] if value else ["keep"])
    assert result.errors == []


def test_3_2_fileinto_create() -> None:
    script = 'require ["fileinto", "mailbox"];\nfileinto :create "Lists/new";\n'
    result = run(script, simple())
    assert_actions(result, [fileinto("Lists/new")])
    [action] = result.actions
    assert action.to_json().get("create", True) is True
    assert getattr(action, "create", True) is True
    plain = run('require "fileinto";\nfileinto "Lists/new";\n', simple())
    assert plain.actions[0].to_json().get("create", False) is False
    # :create belongs to "mailbox".
    refuses('require "fileinto";\nfileinto :create "Lists/new";\n')
    refuses('require "mailbox";\nif mailboxexists "a" { keep; }\nfileinto "x";\n')
    assert_actions(run('require "mailbox";\nif mailboxexists "a" { keep; }\n', simple()), [keep()])


# rfc5490:3.3 -- as printed, the text: string lacks its ";".
METADATA_AS_PRINTED = """\
require ["mboxmetadata", "vacation"];

if metadata :is "INBOX"
   "/private/vendor/vendor.isode/auto-replies" "on" {

    vacation text:
I'm away on holidays till March 2009.
Expect a delay.
.
}
"""

METADATA = METADATA_AS_PRINTED.replace("\n.\n}", "\n.\n;\n}")

# rfc5490:4.1
SERVERMETADATA = """\
require ["enotify", "servermetadata", "variables", "envelope"];

if servermetadata :matches
   "/private/vendor/vendor.isode/notification-uri" "*" {
    set "notif_uri" "${0}";
}

if not string :is "${notif_uri}" "none" {
    # :matches is used to get the MAIL FROM address
    if envelope :all :matches "from" "*" {
        set "env_from" " [really: ${1}]";
    }

    # :matches is used to get the value of the Subject header
    if header :matches "Subject" "*" {
        set "subject" "${1}";
    }

    # :matches is used to get the address from the From header
    if address :matches :all "from" "*" {
        set "from_addr" "${1}";
    }

    notify :message "${from_addr}${env_from}: ${subject}"
           "${notif_uri}";
}
"""


def test_3_3_metadata_example() -> None:
    with pytest.raises(SieveError):
        parse(METADATA_AS_PRINTED.replace("\n", "\r\n"))
    assert parse(METADATA.replace("\n", "\r\n")).commands
    assert "mboxmetadata" not in SUPPORTED
    error = refuses(METADATA)
    assert error.line == 1 and "mboxmetadata" in error.message


def test_4_1_servermetadata_example() -> None:
    assert parse(SERVERMETADATA.replace("\n", "\r\n")).commands
    assert "servermetadata" not in SUPPORTED
    error = refuses(SERVERMETADATA)
    assert error.line == 1


def test_examples_parse() -> None:
    assert parse(MAILBOXEXISTS.replace("\n", "\r\n")).commands
    compile_ok(MAILBOXEXISTS)
    assert "mailbox" in SUPPORTED
