// "Latent: Show Statistics": the server's `latent.stats` figures (lsp_server/commands.py) as a
// Markdown page — status, the last answer's latency and tokens, why answers were empty (each
// reason's share of the requests), the caches and the engine — in a read-only document.
import type { Answer, Status } from "./status";
import { clock, modelFigures } from "./status";

type Figures = Record<string, unknown>;

export interface Stats {
  status?: Status & { lastLatencyMs?: number };
  documents?: number;
  open?: { uri: string; version: number; chars: number; parsed: boolean; stale: boolean }[];
  settings?: Figures;
  service?: Figures & { reasons?: Record<string, number> };
  engine?: Figures & { last_request?: Figures };
  reasons?: Record<string, number>; // the pipeline's and the server's skips (loading, off, manual…)
}

// The pipeline's counters (completion/service.py), in the order a reader wants them.
const COUNTERS: [string, string][] = [
  ["requests", "Requests"],
  ["model_calls", "Answered by the model"],
  ["typing_through", "Typed through (no model)"],
  ["cache_hits", "From the suggestion cache"],
  ["precompute_hits", "Precomputed after an accept"],
  ["suggestions", "Suggestions found (alternatives too)"],
  ["accepted", "Suggestions accepted"],
  ["dropped_syntax", "Candidates dropped: syntax error"],
  ["dropped_empty", "Candidates dropped: empty or repeated"],
  ["skipped", "Skipped before the model"],
  ["cancelled", "Cancelled by a newer keystroke"],
  ["precomputes", "Precomputations"],
  ["precompute_errors", "Precomputations failed"],
];
const NOT_COUNTERS = ["documents", "cache_entries", "typing_through_documents"]; // shown elsewhere, or not counts

const num = (value: unknown): number => (typeof value === "number" && Number.isFinite(value) ? value : 0);
const count = (value: unknown): string => Math.round(num(value)).toLocaleString("en-US");
const percent = (part: number, whole: number): string => (whole > 0 ? `${Math.round((100 * part) / whole)} %` : "–");

function bytes(value: unknown): string {
  const n = num(value);
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(0)} KiB`;
  return `${n} B`;
}

function table(header: [string, string], rows: [string, string][]): string[] {
  if (rows.length === 0) return [];
  const cell = (s: string) => s.replace(/\|/g, "\\|");
  return [`| ${header[0]} | ${header[1]} |`, "|---|---|", ...rows.map(([k, v]) => `| ${cell(k)} | ${cell(v)} |`), ""];
}

function statusLines(status: Stats["status"], settings: Figures): string[] {
  if (!status) return [];
  const enabled = status.enabled
    ? "on"
    : status.snoozedUntil ? `snoozed until ${clock(status.snoozedUntil)}` : "off";
  const trigger = settings.trigger === "manual"
    ? "manual (only when you ask: Alt+\\)"
    : `automatic, ${count(settings.debounce_ms)} ms after the last keystroke`;
  const rows: [string, string][] = [
    ["State", `${status.state}${status.message ? ` — ${status.message}` : ""}`],
    ["Model", status.model || "bundled"],
    ["Completion", enabled],
    ["Trigger", trigger],
    ["Suggestions when you ask", count(settings.suggestions)],
  ];
  const last: Answer | undefined = status.last;
  if (last) {
    const what = last.suggestions ? `${last.suggestions} suggestion(s)` : `nothing: ${last.reasonText || last.reason || "—"}`;
    rows.push(["Last answer", `${last.source}${last.mode && last.mode !== "none" ? `, ${last.mode}` : ""}, ${what}`]);
    rows.push(["Last latency (request to answer)", `${Math.round(num(last.latencyMs))} ms`]);
  }
  if (status.lastModel) rows.push(["Last model answer", modelFigures(status.lastModel)]);
  return ["## Status", "", ...table(["Status", "Now"], rows)];
}

function tokenLines(engine: Stats["engine"]): string[] {
  const last = engine?.last_request;
  if (!last) return [];
  const decodeMs = num(last.decode_ms);
  const generated = num(last.generated_tokens);
  const speed = decodeMs > 0 && generated > 0 ? `, ${Math.round((1000 * generated) / decodeMs)} tokens/s` : "";
  return ["## Last generation", "", ...table(["Tokens", "Count"], [
    ["Prompt", count(last.prompt_tokens)],
    ["Reused from the cache", count(last.reused_tokens)],
    ["Prefilled", `${count(last.prefilled_tokens)} (${Math.round(num(last.prefill_ms))} ms)`],
    ["Generated", `${count(generated)} (${Math.round(decodeMs)} ms${speed})`],
  ])];
}

const total = (counts: Record<string, number> = {}): number => Object.values(counts).reduce((a, b) => a + num(b), 0);

function requestLines(stats: Stats): string[] {
  const service = stats.service;
  if (!service) return [];
  const known = new Set([...COUNTERS.map(([key]) => key), ...NOT_COUNTERS]);
  const rows = [
    ...COUNTERS.filter(([key]) => key in service).map(([key, label]): [string, string] => [label, count(service[key])]),
    ...Object.entries(service).filter(([key, value]) => !known.has(key) && typeof value === "number")
      .map(([key, value]): [string, string] => [key, count(value)]),
  ];
  // the server's skips (loading, off, manual…) never reach the pipeline's request count
  const reasons = stats.reasons ?? service.reasons ?? {};
  const requests = num(service.requests) + Math.max(0, total(reasons) - total(service.reasons));
  const why = Object.entries(reasons).sort((a, b) => b[1] - a[1])
    .map(([reason, n]): [string, string] => [reason, `${percent(n, requests)} (${count(n)})`]);
  return [
    "## Requests", "", ...table(["Requests", "Count"], rows),
    "## Why there was nothing to suggest", "",
    ...(why.length ? table(["Reason", "Share of the requests"], why) : ["Every request had a suggestion.", ""]),
  ];
}

function cacheLines(status: Stats["status"], service: Stats["service"], engine: Stats["engine"]): string[] {
  if (!engine && !service) return [];
  const rows: [string, string][] = [];
  if (engine && "cache_tokens" in engine) {
    rows.push(["Latent prefix cache", `${count(engine.cache_tokens)} tokens, ${bytes(engine.cache_bytes)} of ${bytes(engine.cache_budget_bytes)}`]);
    rows.push(["Hit rate (prompt tokens reused)", percent(num(engine.hit_rate), 1)]);
    rows.push(["Lookups", count(engine.lookups)]);
    rows.push(["Evicted", `${count(engine.evicted_tokens)} tokens`]);
  } else if (status?.cache?.tokens != null) {
    rows.push(["Latent prefix cache", `${count(status.cache.tokens)} tokens`]);
  }
  if (service && "cache_entries" in service) rows.push(["Suggestion cache", `${count(service.cache_entries)} entries`]);
  return ["## Caches", "", ...table(["Cache", "Holds"], rows)];
}

function engineLines(engine: Stats["engine"]): string[] {
  if (!engine || !("model" in engine)) return [];
  const threads = engine.threads as Figures | undefined;
  const rows: [string, string][] = [
    ["Model", `${engine.model}${engine.model_type ? ` (${engine.model_type})` : ""}`],
    ["Parameters", `${(num(engine.parameters) / 1e6).toFixed(1)} M, ${bytes(engine.weight_bytes)}`],
    ["Runs on", `${engine.device ?? "?"}, ${engine.dtype ?? "?"}${engine.quantize ? `, ${engine.quantize}` : ""}`],
  ];
  if (threads) rows.push(["Threads", `prefill ${threads.prefill}, decode ${threads.decode}`]);
  if ("reuse" in engine) rows.push(["Reuse", String(engine.reuse)]);
  if ("max_context" in engine) rows.push(["Context", `${count(engine.max_context)} tokens`]);
  if ("resident_bytes" in engine) rows.push(["Memory", bytes(engine.resident_bytes)]);
  return ["## Engine", "", ...table(["Engine", ""], rows)];
}

function documentLines(open: Stats["open"]): string[] {
  if (!open?.length) return [];
  const rows = open.map((d): [string, string] => [
    decodeURIComponent(d.uri.replace(/^file:\/\//, "")),
    `v${d.version}, ${count(d.chars)} characters${d.parsed ? ", parsed" : ""}${d.stale ? ", DIVERGED" : ""}`,
  ]);
  return ["## Open documents", "", ...table(["Document", ""], rows)];
}

/** The statistics as Markdown. */
export function renderStats(stats: Stats, at = new Date()): string {
  const settings = stats.settings ?? {};
  return [
    `# Latent statistics`,
    "",
    `_${at.toLocaleString()} · Latent: Show Statistics refreshes this page._`,
    "",
    ...statusLines(stats.status, settings),
    ...tokenLines(stats.engine),
    ...requestLines(stats),
    ...cacheLines(stats.status, stats.service, stats.engine),
    ...engineLines(stats.engine),
    ...documentLines(stats.open),
  ].join("\n");
}
