"""A radix tree of token ids whose nodes own MLA latent rows, shared across requests.

Each edge holds a run of token ids and the latent rows computed for them, (L, n, R + P):
the rows of a token depend only on the tokens before it, so any request whose prompt starts
with a path of the tree can take those rows instead of recomputing them.

Public API: `match_prefix`, `gather`, `insert`, `pin` / `unpin`, `evict`, `clear`, `stats`.
Eviction removes least-recently-used unpinned leaves until the rows fit the byte budget.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Sequence

import torch


class Node:
    """An edge of the tree and the node it leads to. Nodes order by last access, least recent
    first (ties by identity): the eviction heap pops the least recently used."""

    __slots__ = ("key", "rows", "children", "parent", "last_access", "pins")

    def __init__(self, key: tuple[int, ...], rows: torch.Tensor, parent: "Node | None") -> None:
        self.key = key                     # token ids on the edge into this node
        self.rows = rows                   # (L, len(key), D) latent rows; empty at the root
        self.children: dict[int, Node] = {}
        self.parent = parent               # None at the root alone
        self.last_access = 0
        self.pins = 0

    @property
    def nbytes(self) -> int:
        return self.rows.numel() * self.rows.element_size()

    def __lt__(self, other: "Node") -> bool:
        return (self.last_access, id(self)) < (other.last_access, id(other))


@dataclass
class Match:
    """The longest cached prefix of a token sequence: its length and the path of nodes."""

    length: int
    nodes: list[Node] = field(default_factory=list)


class LatentCache:
    def __init__(self, budget_bytes: int = 1 << 30) -> None:
        self.budget_bytes = budget_bytes
        self._clock = itertools.count(1)
        self.clear()

    # -- public API -------------------------------------------------------------------------
    def clear(self) -> None:
        self.root = Node((), torch.empty(0), None)
        self.bytes = 0
        self.tokens = 0
        self.lookups = self.lookup_tokens = self.hit_tokens = self.evicted_tokens = 0

    def match_prefix(self, tokens: Sequence[int]) -> Match:
        """Longest cached prefix; a partly matched edge is split so the match ends on a node."""
        node, pos, nodes = self.root, 0, []
        now = next(self._clock)
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                break
            n = common_prefix(child.key, tokens, pos)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            nodes.append(child)
            pos += n
            node = child
        self.lookups += 1
        self.lookup_tokens += len(tokens)
        self.hit_tokens += pos
        return Match(pos, nodes)

    def gather(self, match: Match, out: torch.Tensor, start: int, end: int) -> None:
        """Copy the matched rows for positions [start, end) into out (L, S, D)."""
        pos = 0
        for node in match.nodes:
            n = len(node.key)
            lo, hi = max(start, pos), min(end, pos + n)
            if lo < hi:
                out[:, lo:hi] = node.rows[:, lo - pos : hi - pos]
            pos += n
            if pos >= end:
                break

    def insert(self, tokens: Sequence[int], rows: torch.Tensor) -> int:
        """Add the sequence, copying only rows not already cached; returns tokens added.

        rows: (L, >= len(tokens), D), row i computed for tokens[i].
        """
        match = self.match_prefix(tokens)
        self.lookups -= 1  # an insert is not a lookup
        self.lookup_tokens -= len(tokens)
        self.hit_tokens -= match.length
        if match.length == len(tokens):
            return 0
        parent = match.nodes[-1] if match.nodes else self.root
        key = tuple(tokens[match.length :])
        leaf = Node(key, rows[:, match.length : len(tokens)].clone(), parent)
        leaf.last_access = next(self._clock)
        parent.children[key[0]] = leaf
        self.bytes += leaf.nbytes
        self.tokens += len(key)
        self.evict()
        return len(key)

    def pin(self, match: Match) -> None:
        for node in match.nodes:
            node.pins += 1

    def unpin(self, match: Match) -> None:
        for node in match.nodes:
            node.pins -= 1

    def evict(self, budget_bytes: int | None = None) -> int:
        """Drop LRU unpinned leaves until bytes <= budget; returns bytes freed."""
        budget = self.budget_bytes if budget_bytes is None else budget_bytes
        if self.bytes <= budget:
            return 0
        freed = 0
        heap = [n for n in self._leaves() if n.pins == 0]
        heapq.heapify(heap)
        while self.bytes > budget and heap:
            leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None, "a leaf is below the root"
            del parent.children[leaf.key[0]]
            self.bytes -= leaf.nbytes
            self.tokens -= len(leaf.key)
            self.evicted_tokens += len(leaf.key)
            freed += leaf.nbytes
            if parent is not self.root and not parent.children and parent.pins == 0:
                heapq.heappush(heap, parent)
        return freed

    def stats(self) -> dict:
        return {
            "cache_tokens": self.tokens,
            "cache_bytes": self.bytes,
            "cache_budget_bytes": self.budget_bytes,
            "cache_nodes": sum(1 for _ in self._nodes()) - 1,
            "lookups": self.lookups,
            "hit_rate": self.hit_tokens / self.lookup_tokens if self.lookup_tokens else 0.0,
            "evicted_tokens": self.evicted_tokens,
        }

    def hottest(self, max_bytes: int) -> list[tuple[list[int], torch.Tensor]]:
        """Whole cached sequences (root to leaf), most recently used first, within max_bytes
        of rows; shared prefixes are counted once. For saving the cache across restarts."""
        out, seen, total = [], set(), 0
        for leaf in sorted(self._leaves(), key=lambda n: n.last_access, reverse=True):
            path = _path(leaf)
            extra = sum(n.nbytes for n in path if id(n) not in seen)
            if total + extra > max_bytes:
                continue
            seen.update(id(n) for n in path)
            total += extra
            tokens = [t for n in path for t in n.key]
            out.append((tokens, torch.cat([n.rows for n in path], dim=1)))
        return out

    # -- internal helpers -------------------------------------------------------------------
    def _split(self, child: Node, n: int) -> Node:
        """Cut child's edge after n tokens; returns the new upper node (holding those n)."""
        parent = child.parent
        assert parent is not None, "the root has no edge to cut"
        upper = Node(child.key[:n], child.rows[:, :n].clone(), parent)
        upper.last_access = child.last_access  # unpinned: a pinned child keeps it alive
        child.key, child.rows = child.key[n:], child.rows[:, n:].clone()
        child.parent = upper
        upper.children[child.key[0]] = child
        parent.children[upper.key[0]] = upper
        return upper

    def _nodes(self):
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def _leaves(self):
        return (n for n in self._nodes() if not n.children and n is not self.root)


def _path(node: Node) -> list[Node]:
    """The nodes from the root's child down to `node`."""
    path = []
    while node.parent is not None:   # the root alone has none
        path.append(node)
        node = node.parent
    path.reverse()
    return path


def common_prefix(a: Sequence[int], b: Sequence[int], start: int = 0) -> int:
    """How many leading ids of `a` equal those of `b` from `start` on."""
    n = min(len(a), len(b) - start)
    i = 0
    while i < n and a[i] == b[start + i]:
        i += 1
    return i
