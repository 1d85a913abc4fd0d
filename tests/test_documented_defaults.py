"""What the documentation says a default is, it is: claims in the text against the code.

The pages (``docs/*.rst``), the README, the examples and the estimators' docstrings state
preset values ("Paper: 200; default: 25", "64 in ``"default"``", "the default preset trains
25") and constructor defaults ("``predict_batch_size`` (default 1024)"). This test reads
such claims with a few patterns and compares each with ``skdccm.dccm.PRESETS``,
``skdccm.crlc.PRESETS`` and the constructors' signatures, as they are when it runs: a
preset change without the text (or the text without the code) fails here.

Prose that states a preset value should name the estimator in its sentence or paragraph
(or sit in a file about one estimator); better still, the pages read the value from the
code with the ``:preset-value:`` role (``docs/_ext/skdccm_docs.py``).
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from skdccm import CRLCClustering, DCCMClustering
from skdccm import crlc as crlc_module
from skdccm import dccm as dccm_module

ROOT = Path(__file__).resolve().parents[1]
ESTIMATORS = {"DCCM": (DCCMClustering, dccm_module.PRESETS),
              "CRLC": (CRLCClustering, crlc_module.PRESETS)}
# The changelog records what was true at each release; BENCHMARKS.md records past runs.
SOURCES = sorted([*(p for p in (ROOT / "docs").glob("*.rst") if p.name != "changelog.rst"),
                  ROOT / "README.md", *(ROOT / "examples").glob("*.py"),
                  ROOT / "examples" / "README.txt"])

NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?"
VALUE = rf"(?P<value>{NUMBER}(?![\w.]\d)|``[^`]+``|`[^`]+`|\"[^\"]+\"|True|False|[A-Za-z][\w-]*)"
PRESET_WORD = r"(?P<preset>paper|default|released code)"
#: "Paper: 200", "default: 25", "(paper: 0.1; released code: 0.05)"
COLON_CLAIM = re.compile(rf"\b{PRESET_WORD}\s*:\s*{VALUE}", re.IGNORECASE)
#: '64 in ``"default"``', '(30 for "default")'
IN_PRESET_CLAIM = re.compile(
    rf"{VALUE}\s+(?:epochs\s+)?(?:in|for)\s+(?:the\s+released\s+code\s+and\s+)?(?:the\s+)?"
    r"(?:``)?\"(?P<preset>\w+)\"(?:``)?")
#: "the default preset trains 25", "its default is 30", "a default of 40 epochs"
EPOCH_CLAIM = re.compile(rf"\bdefault(?:\s+preset)?\s+(?:trains|is|of)\s+(?:for\s+)?"
                         rf"(?P<value>{NUMBER})(?!\s*[x%*/])")
#: '``predict_batch_size`` (default 1024)', '``device="auto"`` (the default)'
SIGNATURE_CLAIM = re.compile(r"``(?P<name>\w+)(?:=(?P<inline>[^`]+))?``\s*"
                             r"\((?:the\s+)?default(?:\s+(?P<value>[^)]+))?\)")
LITERAL = re.compile(r"``(\w+)(?:=[^`]*)?``|`(\w+)(?:=[^`]*)?`|\b(\w+)=")


@dataclass
class Claim:
    """One documented default: where, about what, and what the code says."""

    where: str
    estimator: str
    preset: str | None      # None: the constructor's default
    parameter: str
    documented: str

    def actual(self):
        cls, presets = ESTIMATORS[self.estimator]
        if self.preset is None:
            return inspect.signature(cls).parameters[self.parameter].default
        return presets[self.preset][self.parameter]

    def holds(self) -> bool | None:
        """True or False when the documented value can be compared; None when it cannot."""
        return same_value(self.documented, self.actual(), self.candidates())

    def candidates(self) -> set[str]:
        _, presets = ESTIMATORS[self.estimator]
        return {str(p.get(self.parameter)).lower() for p in presets.values()}


def same_value(text: str, actual, candidates: set[str]) -> bool | None:
    """Does ``text`` (as the documentation writes it) state ``actual``?

    Numbers, booleans and quoted strings are compared. A bare word is compared only when it
    names one of the parameter's preset values (``candidates``): "default: Adam" is a
    claim about the optimiser, "Paper: cross-entropy" a description.
    """
    text = text.strip("`").strip()
    quoted = len(text) > 1 and text[0] == text[-1] == '"'
    if quoted:
        return str(actual) == text[1:-1]
    if text in ("True", "False", "None"):
        return repr(actual) == text
    if re.fullmatch(NUMBER, text):
        if isinstance(actual, bool) or not isinstance(actual, int | float):
            return False
        return math.isclose(float(text.replace(",", "")), float(actual), rel_tol=1e-9)
    if text.lower() in candidates:
        return str(actual).lower() == text.lower()
    return None


def constructor_default(estimator: str, parameter: str):
    parameters = inspect.signature(ESTIMATORS[estimator][0]).parameters
    return parameters[parameter].default if parameter in parameters else inspect.Parameter.empty


def estimators_named(text: str) -> list[str]:
    return [name for name in ESTIMATORS if re.search(rf"\b{name}", text, re.IGNORECASE)]


def preset_name(word: str, estimator: str) -> str | None:
    """"released code" is DCCM's ``"code"`` preset; CRLC's ``"paper"`` preset is its code."""
    presets = ESTIMATORS[estimator][1]
    word = {"released code": "code"}.get(word.lower(), word.lower())
    if word == "code" and "code" not in presets:
        word = "paper"
    return word if word in presets else None


def split_paragraphs(text: str) -> list[tuple[int, str]]:
    """(first line number, paragraph joined on one line); comment markers removed."""
    out, lines, start = [], [], 1
    for number, line in enumerate(text.splitlines(), 1):
        line = re.sub(r"^\s*#+ ?", "", line) if not line.lstrip().startswith("#%%") else ""
        if line.strip() and not re.fullmatch(r"[-=~^*]{3,}", line.strip()):
            if not lines:
                start = number
            lines.append(line.strip())
        elif lines:
            out.append((start, " ".join(lines)))
            lines = []
    if lines:
        out.append((start, " ".join(lines)))
    return out


def attribute(sentence: str, paragraph: str, whole: str, parameter: str) -> list[str]:
    """Which estimator a claim speaks of: the sentence's, else the paragraph's, else the
    file's; where several are named, those that have the parameter."""
    for text in (sentence, paragraph, whole):
        named = estimators_named(text)
        if named:
            break
    else:
        named = list(ESTIMATORS)
    having = [n for n in named if any(parameter in p for p in ESTIMATORS[n][1].values())
              or parameter in inspect.signature(ESTIMATORS[n][0]).parameters]
    return having


def prose_claims(text: str, where: str) -> tuple[list[Claim], list[str]]:
    """Claims of a page; and the claims that could not be given one estimator."""
    claims, unattributed = [], []
    for line, paragraph in split_paragraphs(text):
        for sentence in re.split(r"(?<=[.;])\s+(?=[A-Z`(*])", paragraph):
            found = []  # (parameter, preset word or None, value)
            for match in [*COLON_CLAIM.finditer(sentence), *IN_PRESET_CLAIM.finditer(sentence)]:
                before = [next(g for g in m.groups() if g)
                          for m in LITERAL.finditer(sentence[:match.start()])]
                parameter = before[-1] if before else ("max_iter" if "epoch" in sentence
                                                       else None)
                if parameter:
                    found.append((parameter, match["preset"], match["value"]))
            if "epoch" in sentence or "trains" in sentence:
                found += [("max_iter", "default", m["value"])
                          for m in EPOCH_CLAIM.finditer(sentence)]
            for m in SIGNATURE_CLAIM.finditer(sentence):
                # '``lr_schedule="cosine"`` (the default preset)' speaks of the preset
                if m["inline"] and m["value"] == "preset":
                    found.append((m["name"], "default", m["inline"]))
                elif m["inline"] or m["value"]:
                    found.append((m["name"], None, m["inline"] or m["value"]))
            for parameter, word, value in found:
                owners = attribute(sentence, paragraph, text, parameter)
                if len(owners) > 1:
                    values = {repr(Claim(where, o, preset_name(word, o) if word else None,
                                         parameter, value).actual()) for o in owners
                              if word is None or preset_name(word, o)}
                    if len(values) > 1:  # the estimators differ: the text must say which
                        unattributed.append(f"{where}:{line}: {sentence}")
                        continue
                for owner in owners:
                    said = word
                    if said is None and constructor_default(owner, parameter) is None:
                        said = "default"  # None: the parameter takes the preset's value
                    preset = preset_name(said, owner) if said else None
                    has = (parameter in ESTIMATORS[owner][1].get(preset, {}) if said
                           else parameter in inspect.signature(ESTIMATORS[owner][0]).parameters)
                    if (said is None or preset) and has:
                        claims.append(Claim(f"{where}:{line}", owner, preset, parameter, value))
    return claims, unattributed


def docstring_claims(estimator: str) -> list[Claim]:
    """"Paper: X; default: Y" in each parameter's description of the class docstring."""
    from numpydoc.docscrape import ClassDoc

    cls, presets = ESTIMATORS[estimator]
    claims = []
    for param in ClassDoc(cls)["Parameters"]:
        text = " ".join(" ".join(param.desc).split())
        for name in (n.strip() for n in param.name.split(",")):
            if not any(name in p for p in presets.values()):
                continue
            for match in COLON_CLAIM.finditer(text):
                preset = preset_name(match["preset"], estimator)
                if preset and name in presets[preset]:
                    claims.append(Claim(f"{cls.__name__} docstring, {name}", estimator,
                                        preset, name, match["value"]))
    return claims


def all_claims() -> tuple[list[Claim], list[str]]:
    claims, unattributed = [], []
    for path in SOURCES:
        found, loose = prose_claims(path.read_text(encoding="utf-8"),
                                    str(path.relative_to(ROOT)))
        claims += found
        unattributed += loose
    pytest.importorskip("numpydoc")
    for estimator in ESTIMATORS:
        claims += docstring_claims(estimator)
    return claims, unattributed


def test_documented_defaults_are_the_code_defaults():
    claims, unattributed = all_claims()
    wrong = [f"{c.where}: {c.estimator} {c.preset or 'constructor'} {c.parameter} is "
             f"documented as {c.documented}, the code has {c.actual()!r}"
             for c in claims if c.holds() is False]
    assert not wrong, "\n".join(wrong)
    assert not unattributed, ("name the estimator of these default claims:\n"
                              + "\n".join(unattributed))
    checked = [c for c in claims if c.holds()]
    # The patterns still find the claims they were written for.
    assert {(c.estimator, c.preset, c.parameter) for c in checked} >= {
        ("DCCM", "paper", "max_iter"), ("DCCM", "default", "max_iter"),
        ("CRLC", "default", "max_iter"), ("DCCM", "default", "mi_hidden"),
        ("DCCM", "code", "beta"), ("CRLC", "default", "learning_rate"),
        ("DCCM", None, "predict_batch_size"), ("DCCM", None, "device")}


def _wrong(value):
    return value * 2 + 1 if isinstance(value, int | float) and not isinstance(value, bool) \
        else "nonsense"


@pytest.mark.parametrize("template", [
    "DCCM trained for 8 epochs here; its default is {dccm_epochs}.",
    "* ``max_iter=10`` trains for 10 epochs with DCCM; the default preset trains "
    "{dccm_epochs}.",
    "# max_iter=None keeps the preset's number of epochs for DCCM ({dccm_epochs} for "
    '"default").',
    'CRLCClustering: ``max_iter`` (paper: 2000; default: {crlc_epochs}).',
    '``mi_hidden``: 512 in the released code and the ``"paper"`` preset, {mi_hidden} in '
    '``"default"``, where DCCM spends its time.',
    "DCCMClustering predicts in batches of ``predict_batch_size`` (default {batch}).",
])
def test_a_wrong_documented_default_is_found(template):
    """Each pattern: the true value passes, a wrong one fails (so the check can fail)."""
    true = {"dccm_epochs": dccm_module.PRESETS["default"]["max_iter"],
            "crlc_epochs": crlc_module.PRESETS["default"]["max_iter"],
            "mi_hidden": dccm_module.PRESETS["default"]["mi_hidden"],
            "batch": inspect.signature(DCCMClustering).parameters["predict_batch_size"]
            .default}
    right, _ = prose_claims(template.format(**true), "right")
    assert right and all(c.holds() for c in right), right
    wrong, _ = prose_claims(template.format(**{k: _wrong(v) for k, v in true.items()}),
                            "wrong")
    assert any(c.holds() is False for c in wrong), wrong


def test_an_unattributed_claim_that_differs_between_estimators_is_refused():
    claims, unattributed = prose_claims("The default preset trains 25 epochs.", "page")
    assert unattributed and not claims
