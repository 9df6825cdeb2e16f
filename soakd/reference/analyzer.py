"""Query analysis: complexity, keywords and intent, computed before any network I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["QueryAnalysis", "QueryAnalyzer", "QueryComplexity", "analyze_query"]


class QueryComplexity(StrEnum):
    """How much work a query is expected to take."""

    SIMPLE = "simple"
    MODERATE = "moderate"
    COMPLEX = "complex"


@dataclass(frozen=True, slots=True)
class QueryAnalysis:
    """What the analyser found in one query."""

    query: str
    complexity: QueryComplexity
    intent: str
    keywords: tuple[str, ...]
    operators: tuple[str, ...]
    token_count: int


# A quoted phrase counts as one token; words keep inner apostrophes, dashes and dots.
_TOKEN_RE = re.compile(r'"[^"]*"|[+-]?[\w][\w\'.:-]*')
_BOOLEAN_OPERATORS = frozenset({"AND", "OR", "NOT"})
_COMPARISON_WORDS = frozenset({"vs", "versus", "compare", "comparison", "difference", "between"})
_QUESTION_WORDS = frozenset({"what", "why", "how", "when", "where", "who", "which", "is", "can"})
# A word list reads better as text than as 40 quoted items.
_STOPWORDS = frozenset(
    """a an and are as at be by can do does for from has have how i in is it its of on or the
    this that to was what when where which who why will with you your vs versus""".split()  # noqa: SIM905
)
_MAX_KEYWORDS = 8


def _operators(tokens: list[str]) -> list[str]:
    found: list[str] = []
    for token in tokens:
        if token in _BOOLEAN_OPERATORS:
            found.append(token)
        elif token.startswith('"') and token.endswith('"') and len(token) > 1:
            found.append("phrase")
        elif token.lower().startswith(("site:", "filetype:", "intitle:", "inurl:")):
            found.append(token.split(":", 1)[0].lower())
        elif token[0] in "+-" and len(token) > 1:
            found.append("require" if token[0] == "+" else "exclude")
    return found


def _intent(query: str, words: list[str], operators: list[str]) -> str:
    lowered = query.lower()
    if "site" in operators or "inurl" in operators:
        return "navigational"
    if any(word in _COMPARISON_WORDS for word in words):
        return "comparison"
    if lowered.startswith("how to ") or " how to " in lowered:
        return "how_to"
    if lowered.startswith(("what is ", "what are ", "define ", "meaning of ")):
        return "definition"
    if lowered.rstrip().endswith("?") or (words and words[0] in _QUESTION_WORDS):
        return "question"
    return "informational"


def _keywords(tokens: list[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for token in tokens:
        if token in _BOOLEAN_OPERATORS or token.startswith("-"):
            continue
        text = token.strip('"+').lower()
        if ":" in text:
            text = text.split(":", 1)[1]
        for word in re.findall(r"[\w][\w'.-]*", text):
            word = word.strip(".'-")
            if len(word) > 1 and word not in _STOPWORDS:
                seen.setdefault(word, None)
    return tuple(seen)[:_MAX_KEYWORDS]


def analyze_query(query: str) -> QueryAnalysis:
    """Classify ``query``: pure and fast, so the first status event is never held up."""
    tokens = _TOKEN_RE.findall(query)
    words = [token.strip('"+-').lower() for token in tokens]
    operators = _operators(tokens)
    # Clauses joined by conjunctions or punctuation make a query multi-part.
    clauses = 1 + len(re.findall(r"[,;?]\s*\S|\b(?:and|but|while|whereas)\b", query.lower()))
    if len(tokens) > 12 or len(operators) >= 2 or clauses >= 3:
        complexity = QueryComplexity.COMPLEX
    elif len(tokens) > 5 or operators or clauses == 2:
        complexity = QueryComplexity.MODERATE
    else:
        complexity = QueryComplexity.SIMPLE
    return QueryAnalysis(
        query=query,
        complexity=complexity,
        intent=_intent(query, words, operators),
        keywords=_keywords(tokens),
        operators=tuple(operators),
        token_count=len(tokens),
    )


class QueryAnalyzer:
    """The ``query_analyzer`` collaborator of the aggregator; stateless."""

    def analyze(self, query: str) -> QueryAnalysis:
        """Analyse one query."""
        return analyze_query(query)
