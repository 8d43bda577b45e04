"""Errors the completion pipeline raises to its caller (the language server)."""
from __future__ import annotations


class InvalidPosition(ValueError):
    """A position outside the document: a line past the end, or a character past the line's end."""


class UnknownDocument(KeyError):
    """A change or snapshot for a document that is not open."""

    def __str__(self) -> str:  # KeyError would show the repr of its argument
        return str(self.args[0]) if self.args else "unknown document"


class DocumentLimit(ValueError):
    """A document the workspace does not keep: more documents, or more characters in all, than
    its bound (completion.document.Workspace); str(error) is one sentence."""
