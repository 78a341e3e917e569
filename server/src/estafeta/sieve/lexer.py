"""The Sieve lexer (rfc5228:8.1): script text in, tokens with line:column out.

No IO and no state beyond the text being read: ``decode`` checks and
normalises a whole script, ``Lexer.next()`` returns one token at a time, so
the parser stops reading at the first error and a huge script costs only
what was read.  Everything here is linear in the length of the input: each
character is looked at by a bounded number of regular expressions that
cannot backtrack over more than the token they match.

Choices where rfc5228 leaves room (or where we are stricter):

* The script must be valid UTF-8 (bytes are decoded strictly; a str must
  hold no lone surrogates).  rfc5228:2.4.2 asks implementations to accept
  strings of arbitrary octets, but a mail server that turns strings into
  mailbox names, headers and replies is better off refusing them; the
  "encoded-character" extension (rfc5228:2.4.2.4) is the way to write an
  unusual character.  A leading byte order mark is ignored.
* NUL is refused everywhere, in strings and comments too: "NUL (US-ASCII 0)
  is never permitted in scripts" (rfc5228:2.1, rfc5228:2.4.2); every octet
  class of rfc5228:8.1 excludes %x00.  ``${hex:00}`` can still put one in a
  string value.
* Line breaks are CRLF (rfc5228:2.2) or a bare LF, which we accept too; a
  CR not followed by LF is an error.  Inside string values every line break
  becomes CRLF, so a script saved with LF and the same script with CRLF give
  the same tree.
* A hash comment or a multi-line string may end at the end of the script
  where the grammar wants a final CRLF.

Tokens: identifiers (lower-cased), tags (":" and an identifier, lower-cased,
without the colon), numbers (quantifier applied), strings (quoted or
multi-line, escapes resolved), the separators ``[ ] ( ) { } , ;`` and the
end.  Encoded characters are decoded by the parser, which knows whether
"encoded-character" was required; ``decode_encoded`` does the work.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from estafeta.sieve.errors import SieveError

# Token kinds.  A separator's kind is the character itself ("[", ";", ...).
IDENTIFIER: Final = "identifier"
TAG: Final = "tag"
NUMBER: Final = "number"
STRING: Final = "string"
END: Final = "end"
SEPARATORS: Final = frozenset("[](){},;")

MAX_NUMBER: Final = 2**63 - 1  # rfc5228:2.4.1 asks for 2**31 - 1 at least
_QUANTIFIERS: Final = {"k": 2**10, "m": 2**20, "g": 2**30}  # rfc5228:2.4.1

_BOM: Final = "\ufeff"
# rfc5228:2.1: no NUL, and CR only in CRLF; a str may hold lone surrogates.
_FORBIDDEN = re.compile("[\x00\ud800-\udfff]|\r(?!\n)")
_BLANKS = re.compile(r"[ \t\n]+")  # rfc5228:8.1 white-space (CRLF already LF)
# rfc5228:8.1 identifier = (ALPHA / "_") *(ALPHA / DIGIT / "_")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# rfc5228:8.1 number = 1*DIGIT [ QUANTIFIER ]; what follows must not glue on.
_NUMBER = re.compile(r"([0-9]++)([KMGkmg]?+)(?![A-Za-z0-9_])")
_WORD = re.compile(r"[A-Za-z0-9_]*")
# rfc5228:8.1 quoted-string; possessive, so it never backtracks.
_QUOTED = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)  # rfc5228:2.4.2: "\x" is "x"
# rfc5228:8.1 multi-line: "text:" *(SP / HTAB) (hash-comment / CRLF)
_TEXT_START = re.compile(r"[ \t]*+(?:#[^\n]*+)?+\n")
_SPACES = re.compile(r"[ \t]*+")
_UNTERMINATED_TEXT: Final = 'unterminated multi-line string: no line with a lone "." ends it'
_TEXT_END = re.compile(r"^\.(?:\n|\Z)", re.MULTILINE)  # a line with a lone "."
_DOT_STUFFED = re.compile(r"^\.\.", re.MULTILINE)  # rfc5228:2.4.2: ".." is "."

# rfc5228:2.4.2.4: blank = WSP / CRLF (line breaks in values are CRLF).
_BLANK = r"(?:[ \t]|\r\n)"
_ENCODED = re.compile(
    r"\$\{(?:"
    rf"hex:{_BLANK}*+(?P<hex>[0-9A-Fa-f]{{1,2}}+(?:{_BLANK}++[0-9A-Fa-f]{{1,2}}+)*+){_BLANK}*+"
    rf"|unicode:{_BLANK}*+(?P<unicode>[0-9A-Fa-f]++(?:{_BLANK}++[0-9A-Fa-f]++)*+){_BLANK}*+"
    r")\}",
    re.IGNORECASE,
)
_HEX_ITEM = re.compile(r"[0-9A-Fa-f]+")


class Token:
    """One token: its kind, value, source text and position."""

    __slots__ = ("column", "kind", "line", "text", "value")

    def __init__(self, kind: str, value: str | int, text: str, line: int, column: int) -> None:
        self.kind = kind
        self.value = value  # str, or int for numbers
        self.text = text  # as written (for messages); "" at the end
        self.line = line
        self.column = column

    def __repr__(self) -> str:
        return f"Token({self.kind!r}, {self.value!r}, {self.line}:{self.column})"

    def describe(self) -> str:
        """The token as an error message names it."""
        if self.kind == END:
            return "the end of the script"
        if self.kind == STRING:
            return "a string"
        if self.kind == IDENTIFIER:
            return f'identifier "{excerpt(self.text)}"'
        return f'"{excerpt(self.text)}"'


def _position(text: str, index: int) -> tuple[int, int]:
    """Line and column (1-based, in characters) of ``text[index]``."""
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def excerpt(text: str, limit: int = 40) -> str:
    """``text`` on one line and shortened, for an error message."""
    text = " ".join(text[: limit * 2].split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _character(char: str) -> str:
    """A character as an error message shows it."""
    if char.isprintable() and not unicodedata.category(char).startswith("Z"):
        return f'"{char}"'
    return f"U+{ord(char):04X}"


def decode(script: str | bytes) -> str:
    """The text of a script, checked and with CRLF turned into LF.

    Raises SieveError for octets that are not UTF-8, NUL, lone surrogates
    and a CR without LF (rfc5228:2.1, rfc5228:8.1)."""
    if isinstance(script, bytes):
        data = script.removeprefix(_BOM.encode())
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = data[: exc.start]
            line_start = before.rfind(b"\n") + 1
            column = len(before[line_start:].decode("utf-8")) + 1
            raise SieveError(
                before.count(b"\n") + 1, column, f"invalid UTF-8 (octet 0x{data[exc.start]:02x})"
            ) from None
    else:
        text = script.removeprefix(_BOM)
    bad = _FORBIDDEN.search(text)
    if bad is not None:
        line, column = _position(text, bad.start())
        char = bad.group()
        if char == "\x00":
            message = "NUL is not allowed in a script"
        elif char == "\r":
            message = "CR not followed by LF"
        else:
            message = "invalid UTF-8 (a lone surrogate)"
        raise SieveError(line, column, message)
    # Safe for columns: a CR can now only be the last character of a line.
    return text.replace("\r\n", "\n")


def decode_encoded(value: str, line: int, column: int) -> str:
    """``value`` with ``${hex:..}`` and ``${unicode:..}`` decoded
    (rfc5228:2.4.2.4); line and column are the string's, for errors.

    Malformed sequences stay as they are, and decoding is one pass from left
    to right ("${hex:4${hex:30}}" is "${hex:40}").  A well-formed unicode
    value that is a surrogate or beyond U+10FFFF is an error.  The octets of
    the result must be UTF-8 (as the script itself)."""
    if "${" not in value:
        return value
    out = bytearray()
    done = 0
    for match in _ENCODED.finditer(value):
        out += value[done : match.start()].encode("utf-8")
        done = match.end()
        if match.group("hex") is not None:
            out += bytes(int(item, 16) for item in _HEX_ITEM.findall(match.group("hex")))
            continue
        for item in _HEX_ITEM.findall(match.group("unicode")):
            digits = item.lstrip("0") or "0"
            code = int(digits, 16) if len(digits) <= 6 else 0x110000
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise SieveError(
                    line, column, f'"{excerpt(match.group())}" is not a Unicode character'
                )
            out += chr(code).encode("utf-8")
    if not done:
        return value
    out += value[done:].encode("utf-8")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise SieveError(
            line, column, "the ${hex:...} octets in this string are not valid UTF-8"
        ) from None


class Lexer:
    """Tokens of a decoded script (see ``decode``), one per ``next()``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.line_start = 0  # index of the first character of the current line

    def _advance(self, end: int) -> None:
        """Move to ``end``, counting the line breaks passed."""
        breaks = self.text.count("\n", self.pos, end)
        if breaks:
            self.line += breaks
            self.line_start = self.text.rfind("\n", self.pos, end) + 1
        self.pos = end

    def _skip(self) -> None:
        """Skip white space and comments (rfc5228:2.3, rfc5228:8.1)."""
        text = self.text
        while True:
            blanks = _BLANKS.match(text, self.pos)
            if blanks is not None:
                self._advance(blanks.end())
            if text.startswith("#", self.pos):  # hash-comment, to the line's end
                end = text.find("\n", self.pos)
                self._advance(len(text) if end < 0 else end + 1)
            elif text.startswith("/*", self.pos):  # bracket-comment; no nesting
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    column = self.pos - self.line_start + 1
                    raise SieveError(self.line, column, 'unterminated comment: "/*" without "*/"')
                self._advance(end + 2)
            else:
                return

    def next(self) -> Token:
        """The next token; a token of kind END at the end, again and again."""
        self._skip()
        text, start = self.text, self.pos
        line, column = self.line, start - self.line_start + 1
        if start >= len(text):
            return Token(END, "", "", line, column)
        char = text[start]
        if char in SEPARATORS:
            self.pos = start + 1
            return Token(char, char, char, line, column)
        if char == '"':
            return self._quoted(line, column)
        if char == ":":
            tag = _IDENTIFIER.match(text, start + 1)
            if tag is None:
                raise SieveError(line, column, 'expected a tag name after ":"')
            self.pos = tag.end()
            return Token(TAG, tag.group().lower(), text[start : self.pos], line, column)
        if "0" <= char <= "9":
            return self._number(line, column)
        word = _IDENTIFIER.match(text, start)
        if word is None:
            raise SieveError(line, column, f"unexpected character {_character(char)}")
        self.pos = word.end()
        name = word.group().lower()
        if name == "text" and text.startswith(":", self.pos):
            return self._multiline(line, column)
        return Token(IDENTIFIER, name, word.group(), line, column)

    def _number(self, line: int, column: int) -> Token:
        # rfc5228:2.4.1: decimal, with a K, M or G quantifier (powers of two).
        text, start = self.text, self.pos
        match = _NUMBER.match(text, start)
        if match is None:
            word = _WORD.match(text, start)
            assert word is not None  # it matches the empty string
            raise SieveError(line, column, f'invalid number "{excerpt(word.group())}"')
        digits, quantifier = match.groups()
        digits = digits.lstrip("0") or "0"
        # Long digit strings are refused before int() sees them.
        value = int(digits) * _QUANTIFIERS.get(quantifier.lower(), 1) if len(digits) < 20 else -1
        if not 0 <= value <= MAX_NUMBER:
            raise SieveError(
                line,
                column,
                f'number "{excerpt(match.group())}" is too large (at most {MAX_NUMBER})',
            )
        self.pos = match.end()
        return Token(NUMBER, value, match.group(), line, column)

    def _quoted(self, line: int, column: int) -> Token:
        # rfc5228:2.4.2 and rfc5228:8.1 quoted-string: "\\" and "\"" stand
        # for themselves, any other backslash is dropped (before a line break
        # too, which the grammar does not foresee); may span lines.
        match = _QUOTED.match(self.text, self.pos)
        if match is None:
            raise SieveError(line, column, 'unterminated string: no closing "')
        value = match.group()[1:-1]
        if "\\" in value:
            value = _ESCAPE.sub(r"\1", value)
        self._advance(match.end())
        return Token(STRING, value.replace("\n", "\r\n"), '"', line, column)

    def _multiline(self, line: int, column: int) -> Token:
        # rfc5228:2.4.2 and rfc5228:8.1 multi-line: "text:", blanks or a hash
        # comment, a line break, dot-stuffed lines, a line with a lone ".".
        text = self.text
        after = self.pos + 1  # past the ":"
        head = _TEXT_START.match(text, after)
        if head is None:
            spaces = _SPACES.match(text, after)
            assert spaces is not None  # it matches the empty string
            where = spaces.end()
            if where == len(text) or text[where] == "#":  # no line break at all
                raise SieveError(line, column, _UNTERMINATED_TEXT)
            raise SieveError(
                line,
                column + where - self.pos + 4,
                'expected the end of the line after "text:" (only blanks or a # comment)',
            )
        body_start = head.end()
        end = _TEXT_END.search(text, body_start)
        if end is None:
            raise SieveError(line, column, _UNTERMINATED_TEXT)
        value = text[body_start : end.start()]
        if ".." in value:
            value = _DOT_STUFFED.sub(".", value)
        self._advance(end.end())
        return Token(STRING, value.replace("\n", "\r\n"), "text:", line, column)
