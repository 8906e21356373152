"""Answer normalization and the exact/numeric fast path: pure functions, no processes.

Model output is untrusted. Nothing here evaluates it as code: numbers are parsed with regular expressions (no
nested quantifiers over the same characters) and :class:`fractions.Fraction`, every function is linear in the
length of its input (bounded unwrapping loops aside), and inputs are refused before parsing when they are too long
or hold control characters. What this module cannot decide (``fast_grade`` returns None) is left to math-verify in
the worker pool (``softgate.grading.grader``).
"""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

MAX_ANSWER_CHARS = 1000  # extracted answers longer than this score 0 without being parsed
MAX_NUMBER_CHARS = 400  # plain numbers longer than this are not converted (keeps int() and Fraction cheap)

# --------------------------------------------------------------------------------------------------------------
# Normalization and the numeric fast path


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"\s+")
# Spacing and sizing commands that never change a value.
_LATEX_NOISE = re.compile(r"\\[,;:! ]|\\left\b|\\right\b|\\displaystyle\b|\\limits\b")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_WRAPPERS = ("\\boxed", "\\fbox", "\\text", "\\textbf", "\\mathrm", "\\mathbf", "\\textnormal", "\\mbox")
_MATH_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))

_UNICODE_PUNCT = {
    "\u2212": "-",  # minus sign
    "\u2013": "-",  # en dash, used as a minus by some models
    "\ufe63": "-",
    "\uff0d": "-",
    "\u00a0": " ",  # no-break space
    "\u2009": " ",  # thin space (thousands separator in some locales: handled as a space, not joined)
    "\u202f": " ",
    "\uff0e": ".",
    "\uff0c": ",",
    "\uff05": "%",
    "\uff0f": "/",
}


def ascii_digits(text: str) -> str:
    """Map every Unicode decimal digit (category Nd: Arabic-Indic, Devanagari, fullwidth...) to ASCII, and a few
    look-alike signs (minus, fullwidth punctuation) to their ASCII forms.

    Superscripts and other non-decimal digits (``²``, ``½``) are left alone: mapping them would turn ``x²`` into
    ``x2``.
    """
    if text.isascii():
        return text
    out = []
    for ch in text:
        if ch in _UNICODE_PUNCT:
            out.append(_UNICODE_PUNCT[ch])
        elif not ch.isascii() and unicodedata.category(ch) == "Nd":
            out.append(str(unicodedata.decimal(ch)))
        else:
            out.append(ch)
    return "".join(out)


def matching_brace(text: str, open_idx: int, limit: int | None = None) -> int:
    """Index of the ``}`` closing the ``{`` at ``open_idx`` (``\\{`` and ``\\}`` are escaped), or -1.

    ``limit`` bounds the scan to that many characters after ``open_idx`` (-1 when the brace closes later).
    """
    depth = 0
    i = open_idx
    n = len(text) if limit is None else min(len(text), open_idx + limit)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _unwrap_once(s: str) -> str:
    for left, right in _MATH_DELIMS:
        if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left) : -len(right)].strip()
    for cmd in _WRAPPERS:
        if s.startswith(cmd + "{") and matching_brace(s, len(cmd)) == len(s) - 1:
            return s[len(cmd) + 1 : -1].strip()
    return s


def normalize_answer(text: str) -> str:
    """A canonical string for comparison: ASCII digits, no math delimiters or ``\\boxed``/``\\text`` wrapper, no
    LaTeX spacing, ``\\dfrac``/``\\tfrac`` -> ``\\frac``, no degree sign, ``\\%`` -> ``%``, single spaces, no
    trailing period.

    Linear time in ``len(text)`` apart from the unwrapping loop, which is bounded by the number of wrappers.
    """
    s = ascii_digits(text).strip()
    for _ in range(8):  # wrappers nest: $\boxed{\text{5}}$
        s = s.rstrip(". ").strip()
        t = _unwrap_once(s)
        if t == s:
            break
        s = t
    s = _LATEX_NOISE.sub(" ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\%", "%").replace("{,}", ",")
    s = _DEGREES.sub("", s)
    s = _SPACES.sub(" ", s).strip()
    return s.rstrip(".").strip()


_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_THOUSANDS = re.compile(r"^([-+]?)(\d{1,3}(?:,\d{3})+)(\.\d+)?$")
_PLAIN = re.compile(rf"^{_NUM}$")
_SCI = re.compile(r"^([-+]?(?:\d+(?:\.\d*)?|\.\d+))[eE]([-+]?\d{1,3})$")
_SLASH = re.compile(r"^([-+]?\d+)\s*/\s*([-+]?\d+)$")
_FRAC = re.compile(r"^([-+]?)\s*\\frac\s*(?:\{\s*([-+]?\d+)\s*\}|(\d))\s*(?:\{\s*([-+]?\d+)\s*\}|(\d))$")
_CURRENCY = re.compile(r"^(?:\\\$|\$|€|£|¥|₹|USD|EUR|Rs\.?)\s*")
_TEXT_SUFFIX = re.compile(r"\s*\\(?:text|mbox|mathrm|textnormal)\s*\{[^{}]*\}\s*$")
# "12 square feet", "3 cm^2" (words after a space); "12cm" (a short list of units glued to the number).
_UNIT_SUFFIX = re.compile(
    r"\s+((?:[A-Za-z]{2,20}\.?(?:\^\{?\d\}?)?\s*){1,3})$"
    r"|(?<=\d)((?:cm|mm|km|kg|mg|ml|ft|lbs?|oz|min|hrs?|sec)(?:\^\{?\d\}?)?)$"
)
_ASSIGN = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(?=[^=]*$)")
# Words that are maths, not units: "5 pi" must not become 5.
_NOT_UNITS = frozenset({"pi", "sqrt", "inf", "infty", "infinity", "cdot", "times", "frac", "mod", "and", "or", "i"})


def _to_fraction(s: str) -> Fraction | None:
    if len(s) > MAX_NUMBER_CHARS:
        return None
    m = _THOUSANDS.match(s)
    if m:
        s = m.group(1) + m.group(2).replace(",", "") + (m.group(3) or "")
    if _PLAIN.match(s):
        return Fraction(s)
    m = _SCI.match(s)
    if m:  # exponent has at most 3 digits: 10**999 is still cheap
        return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2))
    m = _SLASH.match(s)
    if m:
        num, den = int(m.group(1)), int(m.group(2))
        return Fraction(num, den) if den != 0 else None
    m = _FRAC.match(s)
    if m:
        num, den = int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5))
        if den == 0:
            return None
        value = Fraction(num, den)
        return -value if m.group(1) == "-" else value
    return None


def as_number(text: str) -> Fraction | None:
    """``text`` (already normalized) as an exact rational, or None when it is not a plain number.

    Accepted: integers, ``1,234,567`` thousands separators, decimals, ``1.5e3`` (exponent up to 3 digits),
    ``a/b``, ``\\frac{a}{b}`` / ``\\frac ab`` with a sign in front; around them a currency sign (``$``, ``\\$``,
    ``€``...), a trailing ``%`` (``25%`` reads as 25, the way GSM8K writes references), a trailing
    ``\\text{...}`` or up to three unit words (``12 cm``, ``3 square feet``; not ``pi``), and a leading
    ``x =``. Never calls ``eval``; the regular expressions have no nested quantifiers over the same characters.
    """
    s = _ASSIGN.sub("", text.strip(), count=1)
    s = _TEXT_SUFFIX.sub("", s)
    m = _UNIT_SUFFIX.search(s)
    if m:
        words = (m.group(1) or m.group(2) or "").replace(".", " ").split()
        if words and not any(w.split("^")[0].lower() in _NOT_UNITS for w in words):
            s = s[: m.start()]
    s = s.strip()
    if s.endswith("%"):
        s = s[:-1].rstrip()
    s = _CURRENCY.sub("", s)
    if s.startswith("-") and len(s) > 1 and s[1] in "$\\€£":  # -$5
        inner = as_number(s[1:])
        return -inner if inner is not None else None
    s = s.replace("{,}", ",").strip()
    return _to_fraction(s)


def fast_grade(prediction: str, reference: str) -> bool | None:
    """True / False when the fast path decides, None when only math-verify can tell.

    In order: exact match of the stripped strings -> True; equal after :func:`normalize_answer` -> True; both
    sides plain numbers (:func:`as_number`) -> compared exactly as fractions, and that is final (unless a ``%`` is
    involved and they differ); a numeric reference and a prediction without a single digit -> False.
    """
    if prediction.strip() == reference.strip():
        return True
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if pred == ref:
        return True
    ref_num = as_number(ref)
    if ref_num is not None:
        pred_num = as_number(pred)
        if pred_num is not None:
            if pred_num == ref_num:
                return True
            # "10%" vs "0.1": the fast path reads "10%" as 10 (GSM8K's convention); let math-verify weigh it.
            return None if "%" in pred or "%" in ref else False
        if not any(ch.isdigit() for ch in pred):
            return False
    return None


def screen(prediction: str, max_chars: int = MAX_ANSWER_CHARS) -> str | None:
    """The reason an answer is refused before any parsing (too long, control characters), or None if it is fine."""
    if len(prediction) > max_chars:
        return "too_long"
    if _CONTROL.search(prediction):
        return "control_chars"
    return None
