// The status bar item, fed by the server's `latent/status` notification (lsp_server/status.py).
//
// Its text shows the state and the MODEL's latency — of the last answer the model computed
// (engine time) and the tokens it generated, the server's `lastModel`: an answer typed through or
// taken from the cache costs ~1 ms and says nothing about the model, so it never replaces that
// figure (and an answer the model computed for a request the editor had already cancelled, which
// the typed-through answers after it come from, does). The tooltip
// says what the last answer was, why it was empty, and until when a snooze lasts.
import * as vscode from "vscode";

/** `last` of `latent/status`: the last completion request the server answered. */
export interface Answer {
  source: "model" | "typing-through" | "cache" | "skipped" | "cancelled" | string;
  mode?: string;
  suggestions?: number;
  latencyMs?: number;
  engineMs?: number;
  pipelineMs?: number;
  queueMs?: number;
  generatedTokens?: number;
  prefilledTokens?: number;
  reusedTokens?: number;
  reason?: string;
  reasonText?: string;
}

export interface Status {
  state: "loading" | "ready" | "error";
  enabled: boolean;
  model: string;
  message?: string;
  snoozedUntil?: number; // Unix seconds
  last?: Answer;
  lastModel?: Answer; // the last answer the model computed
  cache?: { tokens?: number; bytes?: number; budgetBytes?: number; hitRate?: number };
}

/** What the item shows besides the server's status: the client's own view. */
export interface View {
  stopped?: boolean; // the server is not running
  manual?: boolean; // trigger = manual: suggestions only on the trigger key
}

export function clock(unixSeconds: number): string {
  return new Date(unixSeconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** "55 ms · 17 tok": a model answer's engine time (else its whole latency) and tokens. */
export function modelFigures(answer: Answer): string {
  const ms = answer.engineMs || answer.pipelineMs || answer.latencyMs || 0;
  return `${Math.round(ms)} ms · ${answer.generatedTokens ?? 0} tok`;
}

export class StatusItem {
  private status: Status | undefined;

  constructor(private readonly item: vscode.StatusBarItem) {
    item.name = "Latent";
    item.command = "latent.showStats";
  }

  /** A new server (restart): forget the old one's figures. */
  reset(): void {
    this.status = undefined;
  }

  update(status: Status): void {
    this.status = status;
  }

  get current(): Status | undefined {
    return this.status;
  }

  render(view: View): void {
    const item = this.item;
    const status = this.status;
    item.backgroundColor = undefined;
    if (status?.state === "error") {
      item.text = "$(error) Latent";
      item.backgroundColor = new vscode.ThemeColor("statusBarItem.errorBackground");
      item.tooltip = `Latent: ${status.message || "error"}\nLatent: Show Log says more.`;
    } else if (view.stopped || !status) {
      item.text = view.stopped ? "$(circle-slash) Latent" : "$(loading~spin) Latent";
      item.tooltip = view.stopped ? "Latent: the server is not running (Latent: Restart Server)" : "Latent: starting";
    } else if (status.state === "loading") {
      item.text = "$(loading~spin) Latent";
      item.tooltip = `Latent: ${status.message || "loading the model"}`;
    } else if (!status.enabled && status.snoozedUntil) {
      item.text = `$(bell-slash) Latent until ${clock(status.snoozedUntil)}`;
      item.tooltip = this.tooltip(status, view);
    } else if (!status.enabled) {
      item.text = "$(circle-slash) Latent off";
      item.tooltip = this.tooltip(status, view);
    } else {
      const figures = [...(view.manual ? ["manual"] : []), ...(status.lastModel ? [modelFigures(status.lastModel)] : [])];
      item.text = ["$(check) Latent", figures.join(" · ")].filter(Boolean).join(" ");
      item.tooltip = this.tooltip(status, view);
    }
    item.show();
  }

  private tooltip(status: Status, view: View): string {
    const lines = [`Latent: ${status.state}, model ${status.model || "bundled"}`];
    if (status.message) lines.push(status.message);
    if (!status.enabled) {
      lines.push(status.snoozedUntil
        ? `Snoozed until ${clock(status.snoozedUntil)} (Latent: Toggle Completion turns it on now)`
        : "Completion is off (Latent: Toggle Completion)");
    } else if (view.manual) {
      lines.push("Trigger: manual, suggestions only when you ask (Alt+\\)");
    }
    const model = status.lastModel;
    if (model) {
      const ms = Math.round(model.engineMs || model.pipelineMs || model.latencyMs || 0);
      const total = model.latencyMs != null ? `, answered ${Math.round(model.latencyMs)} ms after the request` : "";
      lines.push(`Last model answer: ${ms} ms in the model${total}; tokens: ${model.generatedTokens ?? 0} generated, `
        + `${model.prefilledTokens ?? 0} prefilled, ${model.reusedTokens ?? 0} reused`);
    }
    const last = status.last;
    if (last) {
      const mode = last.mode && last.mode !== "none" ? `, ${last.mode}` : "";
      const what = last.suggestions ? `${last.suggestions} suggestion${last.suggestions > 1 ? "s" : ""}` : "nothing to suggest";
      lines.push(`Last answer: ${last.source}${mode}, ${what}`);
      if (!last.suggestions && (last.reasonText || last.reason)) lines.push(`Why: ${last.reasonText || last.reason}`);
    }
    const cache = status.cache ?? {};
    if (cache.tokens != null) {
      const hit = cache.hitRate != null ? `, hit rate ${(100 * cache.hitRate).toFixed(0)} %` : "";
      lines.push(`Cache: ${cache.tokens} tokens${hit}`);
    }
    lines.push("Click for statistics");
    return lines.join("\n");
  }
}
