"""What `latent adapt` never learns: files and lines that look like credentials.

A model trained on a repository can repeat what it read there, so text that may be a secret
is left out of the training text before it is tokenised. The rules, each tested in
tests/test_adapt.py:

- files: `.env` and `.env.*`, `*.pem`, `*.key`, `*.p12`, `*.pfx`, `id_rsa*` / `id_dsa*` /
  `id_ecdsa*` / `id_ed25519*`, `.netrc`, `.pgpass`, and files whose name says `secret`,
  `credential` or `password` — none of their lines;
- a private key block (`-----BEGIN … PRIVATE KEY-----` to its END line);
- token formats with a known prefix: AWS access key ids (`AKIA…`), GitHub (`ghp_`, `gho_`,
  `ghu_`, `ghs_`, `ghr_`, `github_pat_`), GitLab (`glpat-`), Slack (`xoxb-`, `xoxp-`, …),
  Stripe (`sk_live_`, `rk_live_`), OpenAI-style (`sk-…`), Google API keys (`AIza…`), JSON Web
  Tokens (`eyJ….eyJ….`);
- a URL with a password in it (`scheme://user:password@host`);
- a name that says password / passwd / secret / token / api key / access key / private key /
  auth / credential given a string literal (`API_KEY = "…"`, `"password": "…"`, `token="…"`),
  unless the literal is empty, a placeholder (`"<your key>"`, `"xxx"`, `"${TOKEN}"`), the name
  of an environment variable (`"OPENAI_API_KEY"`), or words with spaces (a message), or the
  name says what the value is called rather than what it is (`TOKEN_TYPE`, `api_key_env`,
  `tokenizer`, `auth_url`);
- a string literal of 20 or more characters with no spaces whose characters look random:
  Shannon entropy ≥ 4.0 bits a character (3.0 for hexadecimal, which has 16 letters).

A line that matches is left out whole; the summary counts them.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath

SECRET_FILE = re.compile(
    r"^(\.env(\..*)?|.*\.(pem|key|p12|pfx)|id_(rsa|dsa|ecdsa|ed25519)(\.pub)?|\.netrc|\.pgpass|"
    r".*(secret|credential|password).*)$", re.IGNORECASE)

KEY_BEGIN = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY( BLOCK)?-----")
KEY_END = re.compile(r"-----END [A-Z ]*PRIVATE KEY( BLOCK)?-----")

TOKEN_FORMATS = re.compile(
    r"(?<![A-Za-z0-9])("
    r"(AKIA|ASIA)[0-9A-Z]{16}"                          # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|(sk|rk)_live_[A-Za-z0-9]{16,}"
    r"|sk-[A-Za-z0-9_-]{20,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
    r")")

URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:[^\s/@'\"]+@[^\s'\"]+", re.IGNORECASE)

SECRET_NAME = (r"[A-Za-z_]*(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|auth|"
               r"credential)[A-Za-z0-9_]*")
NAMED_LITERAL = re.compile(
    r"(?i)[\"']?(?P<name>" + SECRET_NAME + r")[\"']?\s*(?::|=|:=|=>)\s*[bru]{0,2}(?P<q>[\"'])(?P<value>[^\"'\n]*)(?P=q)")
# names that say what a secret is called, not what it is: TOKEN_TYPE, api_key_env, tokenizer, auth_url
NOT_A_VALUE = re.compile(r"(?i).*(type|kind|name|names|url|uri|file|path|dir|izer|header|field|env|var|prefix|"
                         r"len|length|count|id|ids|class|regex|pattern|format|label|help|message|msg)$")
PLACEHOLDER = re.compile(r"^(|\*+|x+|\.+|<[^>]*>|\{[^}]*\}|\$\{?\w+\}?|%\(?\w*\)?s|(your|my|some|dummy|example|"
                         r"fake|test|placeholder|changeme|redacted|none|null|secret|password|token)[\w.-]*)$",
                         re.IGNORECASE)

ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")         # the name of a variable that holds it, not the value
LITERAL = re.compile(r"(?P<q>[\"'])(?P<value>[^\"'\s\\]{20,})(?P=q)")
HEX = re.compile(r"^[0-9a-fA-F]+$")


@dataclass
class Cleaned:
    text: str
    lines_left_out: int
    file_left_out: bool = False


def secret_file(path: str) -> bool:
    """A file none of whose text is learnt, by its name."""
    return bool(SECRET_FILE.match(PurePosixPath(path).name))


def entropy(value: str) -> float:
    """Shannon entropy of the characters, bits per character."""
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def random_literal(value: str) -> bool:
    """A long string with no spaces that reads as random bytes (keys, tokens, hashes)."""
    if len(value) < 20:
        return False
    return entropy(value) >= (3.0 if HEX.match(value) else 4.0)


def secret_line(line: str) -> bool:
    """Whether a line looks like it holds a credential (the rules above, key blocks aside)."""
    if TOKEN_FORMATS.search(line) or URL_PASSWORD.search(line):
        return True
    for m in NAMED_LITERAL.finditer(line):
        value = m.group("value").strip()
        if NOT_A_VALUE.match(m.group("name")) or PLACEHOLDER.match(value) or ENV_NAME.match(value) or " " in value:
            continue
        return True
    return any(random_literal(m.group("value")) for m in LITERAL.finditer(line))


def clean(path: str, text: str) -> Cleaned:
    """The text with every line that may hold a secret left out (all of it for a secret file)."""
    if secret_file(path):
        return Cleaned("", text.count("\n") + (not text.endswith("\n")), True)
    kept, dropped, in_key = [], 0, False
    for line in text.splitlines(keepends=True):
        if in_key or KEY_BEGIN.search(line):
            in_key = not KEY_END.search(line)
            dropped += 1
        elif secret_line(line):
            dropped += 1
        else:
            kept.append(line)
    return Cleaned("".join(kept), dropped)
