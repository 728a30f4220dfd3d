"""Query text -> a validated sqlglot ``Select`` (sqlglot is lenient; we are not).

Accepted: ``[EXPLAIN [VERBOSE]] SELECT … FROM occlusion(…) [WHERE …] [GROUP BY …]
[ORDER BY …] [LIMIT n] [;]`` in sqlglot's DuckDB dialect (``name => value`` options).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from krypton_ql.dsl.errors import QueryError

DIALECT = "duckdb"
# Columns of the occlusion relation that sqlglot reads as keywords, and same-length stand-ins
# used while it parses (error positions stay those of the original text).
_RESERVED = {"drop": "_drp", "row": "_rw"}
_STAND_INS = {v: k for k, v in _RESERVED.items()}
_EXPLAIN = re.compile(r"\s*explain(\s+verbose)?\b", re.IGNORECASE)
_UNSUPPORTED = (
    (exp.Join, "joins"),
    (exp.Subquery, "subqueries"),
    (exp.With, "WITH"),
    (exp.Window, "window functions"),
    (exp.Having, "HAVING"),
    (exp.Distinct, "DISTINCT"),
    (exp.Offset, "OFFSET"),
)


@dataclass(frozen=True)
class Statement:
    """A parsed query: the SELECT, whether it is EXPLAINed, and the original text."""

    select: exp.Select
    text: str
    explain: bool = False
    verbose: bool = False


def position(node: exp.Expression, text: str) -> tuple[int, int]:
    """Start and end offsets of a node in ``text``: the span of the tokens sqlglot recorded
    in it."""
    spans = [
        (int(meta["start"]), int(meta["end"]) + 1)
        for child in node.walk()
        if "start" in (meta := getattr(child, "meta", None) or {})
    ]
    if not spans:
        return 0, len(text)
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    if isinstance(node, exp.Kwarg):  # sqlglot keeps no position for the option's name
        name = str(node.this.name if hasattr(node.this, "name") else node.this)
        found = text.lower().rfind(name.lower(), 0, start)
        if found >= 0 and not text[found + len(name) : start].replace("=>", "").strip():
            start = found
    return start, end


def fail(message: str, node: exp.Expression, text: str) -> QueryError:
    start, end = position(node, text)
    return QueryError(message, text, start, end)


def parse(text: str) -> Statement:
    """Parse one statement; every syntax error becomes a ``QueryError`` with its position."""
    if not isinstance(text, str) or not text.strip():
        raise QueryError("the query is empty", text if isinstance(text, str) else "")
    explain = _EXPLAIN.match(text)
    offset = explain.end() if explain else 0
    body = " " * offset + text[offset:]  # keep offsets identical to the original text
    tokens = _tokens(body, text)
    if not tokens or tokens[0].token_type is not TokenType.SELECT:
        start = tokens[0].start if tokens else offset
        end = tokens[0].end + 1 if tokens else len(text)
        raise QueryError("expected [EXPLAIN [VERBOSE]] SELECT …", text, start, end)
    _check_tokens(tokens, text)
    body = _unreserve(body, tokens)
    try:
        statements = [s for s in sqlglot.parse(body, read=DIALECT) if s is not None]
    except ParseError as error:
        raise _from_parse_error(error, text) from None
    except (TokenError, ValueError, RecursionError) as error:
        raise QueryError(f"syntax error: {error}", text, offset) from None
    if len(statements) != 1:
        raise QueryError("expected exactly one statement", text, offset)
    select = statements[0]
    for identifier in select.find_all(exp.Identifier):
        if identifier.this in _STAND_INS:
            identifier.set("this", _STAND_INS[identifier.this])
    if not isinstance(select, exp.Select):
        raise fail(f"expected a SELECT query, got {select.key.upper()}", select, text)
    for projection in select.expressions:
        if isinstance(projection, exp.Star):
            raise fail("name the columns instead of SELECT *", projection, text)
    for kind, what in _UNSUPPORTED:
        found = select.find(kind)
        if found is not None:
            raise fail(f"{what} are not supported in occlusion queries", found, text)
    return Statement(select, text, bool(explain), bool(explain and explain.group(1)))


def _unreserve(body: str, tokens: list[Token]) -> str:
    """Read the keywords ``drop`` and ``row`` as column names."""
    for token in tokens:
        stand_in = _RESERVED.get(token.text.lower())
        if stand_in and token.token_type not in (
            TokenType.VAR,
            TokenType.STRING,
            TokenType.IDENTIFIER,
        ):
            body = body[: token.start] + stand_in + body[token.end + 1 :]
    return body


def _tokens(body: str, text: str) -> list[Token]:
    try:
        return sqlglot.Dialect.get_or_raise(DIALECT).tokenize(body)
    except (TokenError, ValueError) as error:
        raise QueryError(f"cannot read the query: {error}", text, 0) from None


def _check_tokens(tokens: list[Token], text: str) -> None:
    """Reject what sqlglot lets through: empty arguments such as ``f(a,, b)`` or ``f(a,)``."""
    for before, after in zip(tokens, tokens[1:]):
        if (
            before.token_type in (TokenType.COMMA, TokenType.L_PAREN)
            and after.token_type
            in (
                TokenType.COMMA,
                TokenType.R_PAREN,
            )
            and not (
                before.token_type is TokenType.L_PAREN and after.token_type is TokenType.R_PAREN
            )
        ):
            raise QueryError("missing expression", text, after.start, after.end + 1)


def _from_parse_error(error: ParseError, text: str) -> QueryError:
    details = error.errors[0] if error.errors else {}
    description = str(details.get("description") or error).split("\n")[0]
    description = re.sub(
        r"<Token token_type: TokenType\.\w+, text: ([^,]*),.*?>", r"'\1'", description
    )
    line, col = int(details.get("line") or 1), int(details.get("col") or 1)
    highlight = str(details.get("highlight") or "")
    lines = text.split("\n")
    start = sum(len(x) + 1 for x in lines[: line - 1]) + max(0, col - len(highlight))
    return QueryError(f"syntax error: {description}", text, start, start + max(1, len(highlight)))
