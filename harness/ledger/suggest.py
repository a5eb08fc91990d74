"""Near misses in error messages: " (did you mean 'x'?)"."""

from __future__ import annotations

import difflib


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def suggest_name(word: str, choices) -> str:
    """" (did you mean 'x'?)" for a near miss among `choices`, else "" (for messages elsewhere)."""
    return _suggest(word, choices)
