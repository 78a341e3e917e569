"""Hostile scripts and messages: every one finishes, with the documented
outcome -- refused at compile time (SieveError with line:column), or run
to the implicit keep (rfc5228:2.10.6) with the error reported, or simply
the right answer where the input is large but legitimate.

The timeouts are a safety net so that a hang fails one test instead of
the suite; no test asserts a duration.
"""

from __future__ import annotations

import base64

import pytest
from _sieve import (
    Repository,
    assert_actions,
    assert_implicit_keep_after_error,
    build,
    compile_ok,
    context,
    discard,
    fileinto,
    keep,
    message,
    redirect,
    refused_or_fails,
    refuses,
    run,
    simple,
)

from estafeta.sieve import Limits, SieveError, compile_script
from estafeta.sieve import run as sieve_run

MB = 1024 * 1024


# -- nesting and size of the script ------------------------------------


@pytest.mark.timeout(30)
def test_fifteen_levels_are_supported() -> None:
    # rfc5228:2.10.7: at least fifteen levels of blocks and of test lists.
    blocks = "if true {\n" * 15 + "discard;\n" + "}\n" * 15
    assert_actions(run(blocks, simple()), [discard()])
    tests = "if " + "anyof(" * 15 + "true" + ")" * 15 + " { discard; }\n"
    assert_actions(run(tests, simple()), [discard()])
    nots = "if " + "not " * 16 + "true { discard; }\n"
    assert_actions(run(nots, simple()), [discard()])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deep_nesting_is_refused(depth: int) -> None:
    refuses("if true {\n" * depth + "keep;\n" + "}\n" * depth)
    refuses("if " + "anyof(" * depth + "true" + ")" * depth + " { keep; }\n")
    refuses("if " + "not " * depth + "true { keep; }\n")
    refuses("if " + "allof(" * depth + "true" + ")" * depth + " { keep; }\n")


@pytest.mark.timeout(30)
def test_unclosed_nesting_is_refused() -> None:
    refuses("if true {\n" * 100_000)
    refuses("if " + "anyof(" * 100_000)


@pytest.mark.timeout(30)
def test_huge_string_lists_are_refused() -> None:
    items = ", ".join(f'"k{i}"' for i in range(100_000))
    error = refuses(f'if header :is "Subject" [{items}] {{ discard; }}\n')
    assert error.line == 1
    # A list within the limit works, and its last item counts.
    items = ", ".join(f'"k{i}"' for i in range(1000))
    script = f'if header :is "Subject" [{items}] {{ discard; }}\n'
    assert_actions(run(script, simple(subject="k999")), [discard()])
    assert_actions(run(script, simple(subject="k1000")), [keep()])


@pytest.mark.timeout(30)
def test_too_many_nodes_are_refused() -> None:
    refuses("keep;\n" * 30_000)
    refuses("if true { keep; }\n" * 20_000)


@pytest.mark.timeout(30)
def test_errors_carry_line_and_column() -> None:
    error = refuses('require "fileinto";\n\nif true {\n   frobnicate "x";\n}\n')
    assert (error.line, error.column) == (4, 4), str(error)
    assert str(error).startswith("4:4: ")
    # Columns count characters, not bytes.
    error = refuses('# \u00e9\u00e9\u00e9\nif header :is "\u00e9" "\u00e9" { frob; }\n')
    assert (error.line, error.column) == (2, 25), str(error)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "text",
    [
        b"if true { keep; }\xff\n",  # not UTF-8
        "if true { keep; }\0\n",  # NUL is never permitted (rfc5228:2.1)
        'if header :is "a\0b" "c" { keep; }\n',
        "/* unterminated comment\nkeep;\n",
        'keep; "unterminated string\n',
        "text:\nno terminating dot\n",
        "99999999999999999999999G;\n",
    ],
)
def test_malformed_input_is_refused(text: str | bytes) -> None:
    with pytest.raises(SieveError) as info:
        compile_script(text)
    assert info.value.line >= 1 and info.value.column >= 1


# -- variables -----------------------------------------------------------


@pytest.mark.timeout(30)
def test_doubling_a_variable_is_truncated_not_an_error() -> None:
    # rfc5229:6: a value over the implementation's limit is truncated at
    # run time and "MUST NOT be treated as an error".
    script = (
        'require ["variables", "fileinto"];\nset "a" "aaaaaaaa";\n'
        + 'set "a" "${a}${a}";\n' * 40
        + 'set :length "n" "${a}";\nfileinto "len-${n}";\n'
    )
    result = run(script, simple())
    assert result.errors == []
    [action] = [a.to_json() for a in result.actions]
    assert action["action"] == "fileinto"
    length = int(action["mailbox"].removeprefix("len-"))
    assert 4000 <= length <= Limits().max_variable_size


@pytest.mark.timeout(30)
def test_many_variables_are_bounded() -> None:
    sets = "".join(f'set "v{i}" "x";\n' for i in range(2000))
    refused_or_fails('require "variables";\n' + sets, simple())


@pytest.mark.timeout(30)
def test_deeply_nested_variable_references() -> None:
    text = "${a" * 1000 + "}" * 1000
    script = f'require ["variables", "fileinto"];\nset "a" "x";\nset "b" "{text}";\nkeep;\n'
    assert_actions(run(script, simple()), [keep()])


# -- matching ------------------------------------------------------------


@pytest.mark.timeout(30)
def test_matches_with_many_stars_against_a_long_value() -> None:
    pattern = "*a" * 30 + "*b"
    subject = "a" * 20_000
    script = f'if header :matches "Subject" "{pattern}" {{ discard; }}\n'
    assert_actions(run(script, simple(subject=subject)), [keep()])
    assert_actions(run(script, simple(subject=subject + "b")), [discard()])
    qmarks = "?" * 500 + "*" + "?*" * 500 + "b"
    script = f'if header :matches "Subject" "{qmarks}" {{ discard; }}\n'
    assert_actions(run(script, simple(subject=subject)), [keep()])


@pytest.mark.timeout(30)
def test_match_variables_of_a_long_match() -> None:
    script = (
        'require ["variables", "fileinto"];\n'
        'if header :matches "Subject" "' + "*x" * 9 + '*" { fileinto "m-${9}"; }\n'
    )
    subject = "yx" * 10_000
    assert_actions(run(script, simple(subject=subject)), [fileinto("m-y")])


@pytest.mark.timeout(30)
def test_nested_quantifier_regex_hits_the_timeout() -> None:
    # The brief's example: "(a+)+$" costs the regex module cubic time, hours
    # on 50,000 characters; the regex timeout turns it into a runtime error
    # and the implicit keep.
    script = 'require "regex";\nif header :regex "Subject" "(a+)+$" { discard; }\n'
    assert_implicit_keep_after_error(run(script, simple(subject="a" * 50_000 + "b")))
    assert_actions(run(script, simple(subject="b" + "a" * 50_000)), [discard()])


@pytest.mark.timeout(30)
def test_catastrophic_regex_hits_the_timeout() -> None:
    # "(a|aa)+$" backtracks exponentially on "aaa...b": the regex timeout
    # turns it into a runtime error and the implicit keep.
    script = 'require "regex";\nif header :regex "Subject" "(a|aa)+$" { discard; }\n'
    result = run(script, simple(subject="a" * 60 + "b"))
    assert_implicit_keep_after_error(result)
    assert_actions(run(script, simple(subject="aaaa")), [discard()])


@pytest.mark.timeout(30)
def test_catastrophic_regex_on_a_body() -> None:
    script = 'require ["regex", "body"];\nif body :regex "^(a|aa)+$" { discard; }\n'
    result = run(script, simple(body="a" * 100 + "b"))
    assert_implicit_keep_after_error(result)


@pytest.mark.parametrize("pattern", ["(", "[z-a]", "*"])
def test_invalid_regex_is_refused(pattern: str) -> None:
    refuses(f'require "regex";\nif header :regex "Subject" "{pattern}" {{ discard; }}\n')


@pytest.mark.timeout(30)
@pytest.mark.parametrize("pattern", ["a{99999999}", "((a{1000}){1000}){1000}"])
def test_huge_repeat_counts_do_not_hang_the_compiler(pattern: str) -> None:
    # regex.compile("a{99999999}") alone runs for minutes without a timeout.
    refused_or_fails(
        f'require "regex";\nif header :regex "Subject" "{pattern}" {{ discard; }}\n', simple()
    )


# -- actions ---------------------------------------------------------------


@pytest.mark.timeout(30)
def test_redirect_limit() -> None:
    limits = Limits()
    n = limits.max_redirects
    ok = "".join(f'redirect "u{i}@example.org";\n' for i in range(n))
    assert_actions(run(ok, simple()), [redirect(f"u{i}@example.org") for i in range(n)])
    over = "".join(f'redirect "u{i}@example.org";\n' for i in range(n + 1))
    assert_implicit_keep_after_error(run(over, simple()))
    many = "".join(f'redirect "u{i}@example.org";\n' for i in range(1000))
    assert_implicit_keep_after_error(run(many, simple()))


@pytest.mark.timeout(30)
def test_redirect_to_the_same_address_twice_is_one_redirect() -> None:
    # DESIGN.md: the action list is deduplicated.
    script = 'redirect "u@example.org";\n' * 2
    assert_actions(run(script, simple()), [redirect("u@example.org")])


@pytest.mark.timeout(30)
def test_action_limit() -> None:
    many = 'require "fileinto";\n' + "".join(f'fileinto "box{i}";\n' for i in range(1000))
    assert_implicit_keep_after_error(run(many, simple()))
    limits = Limits(max_actions=3)
    three = 'require "fileinto";\n' + "".join(f'fileinto "box{i}";\n' for i in range(3))
    assert_actions(run(three, simple(), limits=limits), [fileinto(f"box{i}") for i in range(3)])
    four = 'require "fileinto";\n' + "".join(f'fileinto "box{i}";\n' for i in range(4))
    assert_implicit_keep_after_error(run(four, simple(), limits=limits))


@pytest.mark.timeout(30)
def test_the_same_mailbox_twice_is_not_an_error() -> None:
    # rfc5228:2.10.3: writing to a mailbox twice "MUST NOT be treated as an
    # error"; the message is filed once.
    script = 'require "fileinto";\n' + 'fileinto "Same";\nkeep;\n' * 40
    assert_actions(run(script, simple()), [fileinto("Same"), keep()])


@pytest.mark.timeout(60)
def test_step_limit() -> None:
    limits = Limits(max_steps=1000)
    script = 'if header :is "X" "y" { discard; }\n' * 3000  # 18,000 nodes
    assert_implicit_keep_after_error(run(script, simple(), limits=limits))
    # Included scripts count toward the same budget.
    repo = Repository(personal={"part": 'if header :is "X" "y" { discard; }\n' * 400})
    main = 'require "include";\n' + 'include "part";\n' * 5
    assert_implicit_keep_after_error(run(main, simple(), limits=limits, load_include=repo.load))


# -- include ---------------------------------------------------------------


@pytest.mark.timeout(30)
def test_include_recursion_and_depth() -> None:
    limits = Limits()
    chain = {f"s{i}": f'require "include";\ninclude "s{i + 1}";\n' for i in range(100)}
    chain["s100"] = 'require "fileinto";\nfileinto "deep";\n'
    repo = Repository(personal=chain)
    assert_implicit_keep_after_error(run(chain["s0"], simple(), load_include=repo.load))
    assert len(repo.loads) <= limits.max_include_depth + 1
    # rfc6609:3.1: at least three levels, the top-level script included.
    short = Repository(
        personal={
            "s1": 'require "include";\ninclude "s2";\n',
            "s2": 'require "fileinto";\nfileinto "deep";\n',
        }
    )
    top = 'require "include";\ninclude "s1";\n'
    assert_actions(run(top, simple(), load_include=short.load), [fileinto("deep")])
    # A cycle of two.
    cycle = Repository(
        personal={
            "a": 'require "include";\ninclude "b";\n',
            "b": 'require "include";\ninclude "a";\n',
        }
    )
    assert_implicit_keep_after_error(run(cycle.personal["a"], simple(), load_include=cycle.load))


@pytest.mark.timeout(30)
def test_include_count_limit() -> None:
    limits = Limits()
    names = [f"p{i}" for i in range(1000)]
    repo = Repository(personal={n: "keep;\n" for n in names})
    main = 'require "include";\n' + "".join(f'include "{n}";\n' for n in names)
    assert_implicit_keep_after_error(run(main, simple(), load_include=repo.load))
    assert len(repo.loads) <= limits.max_includes + 1


@pytest.mark.timeout(30)
def test_include_without_a_loader_is_a_runtime_error() -> None:
    script = compile_ok('require "include";\ninclude "x";\n')
    assert_implicit_keep_after_error(run(script, simple()))


# -- large messages ----------------------------------------------------------


def many_headers(count: int, needle: str | None) -> bytes:
    headers = [("From", "a@example.org"), ("Subject", "s")]
    headers += [("X-H", f"value {i}") for i in range(count)]
    headers += [("To", f"u{i}@example.org") for i in range(count)]
    if needle is not None:
        headers.append(("X-H", needle))
    return build(headers, "body\n")


@pytest.mark.timeout(60)
def test_ten_thousand_headers() -> None:
    with_needle = many_headers(10_000, "needle")
    without = many_headers(10_000, None)
    script = 'if header :contains "X-H" "needle" { discard; }\n'
    assert_actions(run(script, with_needle), [discard()])
    assert_actions(run(script, without), [keep()])
    script = 'if address :is "To" "u9999@example.org" { discard; }\n'
    assert_actions(run(script, without), [discard()])
    script = (
        'require ["relational", "comparator-i;ascii-numeric"];\n'
        'if header :count "ge" :comparator "i;ascii-numeric" "X-H" "10000" { discard; }\n'
    )
    assert_actions(run(script, without), [discard()])
    script = 'if header :matches "X-H" "' + "*a" * 10 + '*b" { discard; }\n'
    assert_actions(run(script, without), [keep()])


@pytest.mark.timeout(60)
def test_a_huge_header_field() -> None:
    value = " ".join(["x" * 70] * 20_000)  # about 1.4 MB, folded below
    msg = message(f"From: a@example.org\nSubject: {value.replace(' ', chr(10) + ' ')}\n\nb\n")
    script = 'if header :contains "Subject" "needle" { discard; }\n'
    assert_actions(run(script, msg), [keep()])


@pytest.mark.timeout(120)
def test_body_of_twenty_mebibytes() -> None:
    # rfc5173:8: body matching is bounded; here the first
    # Limits.max_body_scan octets (1 MiB) are searched, the rest is not.
    line = "lorem ipsum dolor sit amet, consectetur adipiscing elit sed do eiusmod\n"
    filler = line * (20 * MB // len(line))
    script = 'require "body";\nif body :contains "needle" { discard; }\n'
    assert_actions(run(script, simple(body="the needle\n" + filler)), [discard()])
    assert_actions(run(script, simple(body=filler + "the needle\n")), [keep()])
    plain = simple(body=filler)
    raw = 'require "body";\nif body :raw :matches "*needle*haystack*" { discard; }\n'
    assert_actions(run(raw, plain), [keep()])
    stars = 'require "body";\nif body :text :matches "' + "*o" * 12 + '*zzz" { discard; }\n'
    assert_actions(run(stars, plain), [keep()])
    assert_actions(
        run('require "body";\nif body :raw :matches "lorem*" { discard; }\n', plain), [discard()]
    )


@pytest.mark.timeout(120)
def test_base64_part_of_twenty_mebibytes() -> None:
    data = base64.encodebytes(b"0123456789abcdef" * (20 * MB // 16)).decode()
    msg = message(
        "From: a@example.org\nSubject: big\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n'
        f"Content-Transfer-Encoding: base64\n\n{data}\n--b--\n"
    )
    script = 'require "body";\nif body :content "text" :contains "needle" { discard; }\n'
    assert_actions(run(script, msg), [keep()])


@pytest.mark.timeout(60)
def test_deeply_nested_mime() -> None:
    depth = 2000
    text = "From: a@example.org\nSubject: nest\nMIME-Version: 1.0\n"
    for i in range(depth):
        text += f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n'
    text += "Content-Type: text/plain\n\nneedle\n"
    for i in reversed(range(depth)):
        text += f"--b{i}--\n"
    script = 'require "body";\nif body :content "text" :contains "needle" { discard; }\n'
    result = run(script, message(text))
    # Either found, or the nesting limit stopped the search; never a crash.
    assert [a.to_json()["action"] for a in result.actions] in (["discard"], ["keep"])


@pytest.mark.timeout(60)
def test_many_mime_parts() -> None:
    parts = "".join(f"--b\nContent-Type: text/plain\n\npart {i}\n" for i in range(20_000))
    msg = message(
        "From: a@example.org\nSubject: parts\nMIME-Version: 1.0\n"
        f'Content-Type: multipart/mixed; boundary="b"\n\n{parts}--b--\n'
    )
    script = 'require "body";\nif body :content "text" :is "needle" { discard; }\n'
    result = run(script, msg)
    assert [a.to_json()["action"] for a in result.actions] == ["keep"]


@pytest.mark.timeout(30)
def test_run_never_raises_for_garbage_messages() -> None:
    script = compile_ok(
        'require ["body", "date", "relational", "envelope"];\n'
        'if anyof (header :contains "Subject" "x", address :domain "From" "x",\n'
        '          body :raw :contains "x", date :value "gt" "date" "year" "2000",\n'
        '          exists "To", size :over 1) { keep; }\n'
    )
    for msg in [
        b"",
        b"\r\n",
        b"\xff\xfe\x00",
        b"no header at all",
        b":\r\n\r\n",
        b"From: <<<@@@>>>\r\nDate: 99 Foo 99999 99:99:99 +9999\r\n\r\n",
    ]:
        result = sieve_run([script], context(msg))
        assert [a.to_json()["action"] for a in result.actions] == ["keep"]
