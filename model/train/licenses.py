"""Which license a package declares, read from its own metadata, and whether the corpus may use it.

A package's core metadata (a wheel's METADATA, an sdist's PKG-INFO) says its license in three
places; the first that names one decides:

    License-Expression   an SPDX expression (PEP 639): "MIT", "Apache-2.0 OR BSD-3-Clause"
    Classifier           "License :: OSI Approved :: MIT License", one per license
    License              free text: a name ("BSD"), or the whole license text

Only permissive licenses are allowed (ALLOWED). An expression is allowed when every term of
an AND is, and at least one side of an OR; several classifiers must all be allowed (a package
that lists GPL next to MIT is not taken on trust). Unknown or missing: not allowed.
"""
from __future__ import annotations

import re
from email.message import Message

# SPDX ids (and the family names the other two fields use) the corpus may hold.
ALLOWED = frozenset({
    "MIT", "MIT-0", "BSD", "BSD-2-Clause", "BSD-3-Clause", "0BSD", "Apache-2.0", "PSF-2.0",
    "ISC", "Unlicense", "Zlib", "HPND", "MIT-CMU", "CC0-1.0", "BSL-1.0", "UPL-1.0",
    "Python-2.0", "CNRI-Python", "NCSA", "X11", "curl", "Public-Domain",
})

# Trove classifier (after "License :: ") → SPDX-like id.
_CLASSIFIERS = {
    "OSI Approved :: MIT License": "MIT",
    "OSI Approved :: MIT No Attribution License (MIT-0)": "MIT-0",
    "OSI Approved :: BSD License": "BSD",
    "OSI Approved :: Apache Software License": "Apache-2.0",
    "OSI Approved :: Python Software Foundation License": "PSF-2.0",
    "OSI Approved :: ISC License (ISCL)": "ISC",
    "OSI Approved :: The Unlicense (Unlicense)": "Unlicense",
    "OSI Approved :: zlib/libpng License": "Zlib",
    "OSI Approved :: Historical Permission Notice and Disclaimer (HPND)": "HPND",
    "OSI Approved :: Boost Software License 1.0 (BSL-1.0)": "BSL-1.0",
    "OSI Approved :: Universal Permissive License (UPL)": "UPL-1.0",
    "OSI Approved :: University of Illinois/NCSA Open Source License": "NCSA",
    "CC0 1.0 Universal (CC0 1.0) Public Domain Dedication": "CC0-1.0",
    "Public Domain": "Public-Domain",
    "OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "OSI Approved :: GNU General Public License (GPL)": "GPL",
    "OSI Approved :: GNU General Public License v2 (GPLv2)": "GPL-2.0",
    "OSI Approved :: GNU General Public License v3 (GPLv3)": "GPL-3.0",
    "OSI Approved :: GNU Lesser General Public License v2 (LGPLv2)": "LGPL-2.0",
    "OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0",
    "OSI Approved :: GNU Library or Lesser General Public License (LGPL)": "LGPL",
    "OSI Approved :: GNU Affero General Public License v3": "AGPL-3.0",
    "OSI Approved :: Eclipse Public License 2.0 (EPL-2.0)": "EPL-2.0",
    "OSI Approved :: Zope Public License": "ZPL",
    "OSI Approved :: Academic Free License (AFL)": "AFL",
    "OSI Approved :: Artistic License": "Artistic",
}

# Free-text License fields: a short name, or phrases of the license text itself.
_NAMES = [
    (r"\b(a?gpl|general public)", None),          # checked first: "LGPL" must not read as MIT
    (r"\bmpl\b|mozilla", "MPL-2.0"),
    (r"^\s*mit(-0| no attribution)\b", "MIT-0"),
    (r"\bmit\b|expat|permission is hereby granted, free of charge", "MIT"),
    (r"\bbsd\b.*\b3\b|\b3-clause|new bsd|modified bsd|bsd-3", "BSD-3-Clause"),
    (r"\bbsd\b.*\b2\b|\b2-clause|simplified bsd|freebsd|bsd-2", "BSD-2-Clause"),
    (r"\bbsd\b|redistribution and use in source and binary forms", "BSD"),
    (r"apache", "Apache-2.0"),
    (r"\bpsf\b|python software foundation", "PSF-2.0"),
    (r"\bisc\b", "ISC"),
    (r"unlicense", "Unlicense"),
    (r"\bzlib\b", "Zlib"),
    (r"\bhpnd\b|historical permission notice", "HPND"),
]


def spdx_allowed(expression: str) -> bool:
    """An SPDX expression with AND / OR (parentheses read as grouping)."""
    words = expression.replace("(", " ( ").replace(")", " ) ").split()
    tokens = [w for i, w in enumerate(words)                 # "X WITH exception": X decides
              if w.upper() != "WITH" and not (i and words[i - 1].upper() == "WITH")]
    pos = 0

    def term() -> bool:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            value = either()
            pos += 1                                  # ")"
            return value
        return tok.rstrip("+").removeprefix("LicenseRef-") in ALLOWED

    def joined(word: str, part, combine):
        """part (word part)*, folded with combine: AND binds tighter than OR."""
        def parse() -> bool:
            nonlocal pos
            value = part()
            while pos < len(tokens) and tokens[pos].upper() == word:
                pos += 1
                value = combine(part(), value)
            return value
        return parse

    both = joined("AND", term, lambda a, b: a and b)
    either = joined("OR", both, lambda a, b: a or b)

    try:
        return either() and pos == len(tokens)
    except IndexError:
        return False


def name_from_text(text: str) -> str | None:
    """The license a free-text License field names (first 4 kB), or None."""
    head = text[:4000].lower()
    for pattern, name in _NAMES:
        if re.search(pattern, head):
            return name if name else "GPL-family"
    return None


def classify(meta: Message) -> tuple[str, bool]:
    """(the license as a label, whether the corpus may use it) from core metadata."""
    expression = (meta.get("License-Expression") or "").strip()
    if expression:
        return expression, spdx_allowed(expression)
    classifiers = [c.split("::", 1)[1].strip() for c in meta.get_all("Classifier") or []
                   if c.startswith("License ::")]
    known = sorted({_CLASSIFIERS.get(c, c) for c in classifiers if c != "OSI Approved"})
    if known:
        return " + ".join(known), all(k in ALLOWED for k in known)
    text = meta.get("License") or ""
    name = name_from_text(text) if text.strip() and text.strip().upper() != "UNKNOWN" else None
    if name is None:
        return "unknown", False
    return name, name in ALLOWED
