"""Query text -> a parsed statement: sqlglot (DuckDB dialect) reads it so that the compiler can
find the ``occlusion(…)`` calls and the predicates it can push into them; DuckDB runs it.

A statement without an ``occlusion(…)`` or ``heatmap(…)`` call goes to DuckDB as it is
(``Statement.tree`` is None): DuckDB's SQL is the language, and sqlglot need not know all of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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
# ``drop`` followed by one of these is the statement DROP, not the column.
_DROP_OBJECTS = {"table", "view", "macro", "function", "schema", "sequence", "index", "type"}
_EXPLAIN = re.compile(r"\s*explain(\s+verbose)?\b", re.IGNORECASE)


@dataclass(frozen=True)
class Statement:
    """A statement: its sqlglot tree (None when it has no occlusion call), the original text,
    and whether it is EXPLAINed (``EXPLAIN`` of a statement without an occlusion call is
    DuckDB's own)."""

    tree: exp.Expression | None
    text: str
    explain: bool = False
    verbose: bool = False
    tokens: tuple[Token, ...] = field(default=(), compare=False, repr=False)

    @property
    def body(self) -> int:
        """Where the statement starts after an ``EXPLAIN [VERBOSE]`` prefix."""
        match = _EXPLAIN.match(self.text) if self.explain else None
        return match.end() if match else 0


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
    """Parse one statement; every syntax error of a statement with an occlusion call becomes a
    ``QueryError`` with its position (DuckDB reports those of the others)."""
    if not isinstance(text, str) or not text.strip().rstrip(";").strip():
        raise QueryError("the query is empty", text if isinstance(text, str) else "")
    explain = _EXPLAIN.match(text)
    offset = explain.end() if explain else 0
    body = " " * offset + text[offset:]  # keep offsets identical to the original text
    try:
        tokens = sqlglot.Dialect.get_or_raise(DIALECT).tokenize(body)
    except (TokenError, ValueError):
        tokens = None
    ends = [t for t in tokens or [] if t.token_type is TokenType.SEMICOLON]
    if (
        tokens
        and ends
        and any(t.token_type is not TokenType.SEMICOLON for t in tokens[tokens.index(ends[0]) :])
    ):
        raise QueryError(
            "one statement at a time (run a script with kql shell < script.sql)",
            text,
            ends[0].start,
        )
    if tokens is None or not (calls(tokens) or calls(tokens, "heatmap")):
        if tokens is None and "occlusion" in text.lower():
            raise QueryError("cannot read the query", text, offset)
        return Statement(None, text, bool(explain), bool(explain and explain.group(1)))
    for start, end in calls(tokens):
        _check_arguments(tokens[start:end], text)
    try:
        statements = [s for s in sqlglot.parse(_unreserve(body, tokens), read=DIALECT) if s]
    except ParseError as error:
        raise _from_parse_error(error, text) from None
    except (TokenError, ValueError, RecursionError) as error:
        raise QueryError(f"syntax error: {error}", text, offset) from None
    if len(statements) != 1:
        raise QueryError("expected exactly one statement", text, offset)
    tree = statements[0]
    for identifier in tree.find_all(exp.Identifier):
        if identifier.this in _STAND_INS:
            identifier.set("this", _STAND_INS[identifier.this])
    assert isinstance(tree, exp.Expression)
    return Statement(tree, text, bool(explain), bool(explain and explain.group(1)), tuple(tokens))


def split(text: str) -> list[str]:
    """The statements of a script, each with its own text (``;`` outside strings ends one).

    >>> split("SELECT 1; SELECT ';' AS s;\\n")
    ['SELECT 1', "SELECT ';' AS s"]
    """
    try:
        tokens = sqlglot.Dialect.get_or_raise(DIALECT).tokenize(text)
    except (TokenError, ValueError) as error:
        raise QueryError(f"cannot read the script: {error}", text, 0) from None
    parts, start = [], 0
    for token in tokens:
        if token.token_type is TokenType.SEMICOLON:
            parts.append(text[start : token.start])
            start = token.end + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def complete(text: str) -> bool:
    """Whether ``text`` ends a statement: its last token is ``;`` (a prompt's test)."""
    try:
        tokens = sqlglot.Dialect.get_or_raise(DIALECT).tokenize(text)
    except (TokenError, ValueError):
        return False  # an unterminated string or comment: wait for more
    return bool(tokens) and tokens[-1].token_type is TokenType.SEMICOLON


def calls(
    tokens: tuple[Token, ...] | list[Token], name: str = "occlusion"
) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` of every call of the function ``name``."""
    found = []
    for index, token in enumerate(tokens[:-1]):
        if token.text.lower() == name and tokens[index + 1].token_type is TokenType.L_PAREN:
            depth, end = 0, len(tokens)
            for inner in range(index + 1, len(tokens)):
                kind = tokens[inner].token_type
                depth += (kind is TokenType.L_PAREN) - (kind is TokenType.R_PAREN)
                if depth == 0:
                    end = inner + 1
                    break
            found.append((index, end))
    return found


def _unreserve(body: str, tokens: list[Token]) -> str:
    """Read the keywords ``drop`` and ``row`` as column names (not ``DROP TABLE …``)."""
    for index, token in enumerate(tokens):
        stand_in = _RESERVED.get(token.text.lower())
        following = tokens[index + 1].text.lower() if index + 1 < len(tokens) else ""
        if stand_in == "_drp" and following in _DROP_OBJECTS:
            continue
        if stand_in and token.token_type not in (
            TokenType.VAR,
            TokenType.STRING,
            TokenType.IDENTIFIER,
        ):
            body = body[: token.start] + stand_in + body[token.end + 1 :]
    return body


def _check_arguments(tokens: list[Token], text: str) -> None:
    """Reject what sqlglot lets through in a call: empty arguments such as ``f(a,, b)``."""
    for before, after in zip(tokens, tokens[1:]):
        if (
            before.token_type in (TokenType.COMMA, TokenType.L_PAREN)
            and after.token_type in (TokenType.COMMA, TokenType.R_PAREN)
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
