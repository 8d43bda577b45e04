// Latent for VS Code: starts `latent lsp` and lets vscode-languageclient show its inline
// completions (LSP 3.18 textDocument/inlineCompletion) as ghost text. Adds a status bar item
// fed by the server's `latent/status` notification, commands, and the "Latent" output channel.
import * as vscode from "vscode";
import {
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
} from "vscode-languageclient/node";

const SECTION = "latent";
const SERVER_KEYS = ["server.path", "server.pythonPath", "server.args", "server.env"];

interface Status {
  state: "loading" | "ready" | "error";
  enabled: boolean;
  model: string;
  message?: string;
  lastLatencyMs?: number | null;
  cache?: { tokens?: number; bytes?: number; budgetBytes?: number; hitRate?: number };
}

let client: LanguageClient | undefined;
let output: vscode.LogOutputChannel;
let statusItem: vscode.StatusBarItem;
let lastStatus: Status | undefined;

// ---------------------------------------------------------------------------------------------
// Settings
//
// Settings that choose where code goes or what runs (the server command and its environment,
// the model, the engine, its API key variable, ...) are `"scope": "machine"` in package.json:
// they are read from the user's settings only, never from a workspace's `.vscode/settings.json`
// (a cloned repository could set them), and travel to the server as initializationOptions —
// the server refuses them in workspace/didChangeConfiguration. A change to one restarts it.

interface Setting {
  key: string; // without the "latent." prefix
  userOnly: boolean; // "scope": "machine"
}

function declaredSettings(): Setting[] {
  const pkg = vscode.extensions.getExtension("latent.latent")?.packageJSON;
  const out: Setting[] = [];
  for (const block of pkg?.contributes?.configuration ?? []) {
    for (const [full, spec] of Object.entries<{ scope?: string }>(block.properties ?? {})) {
      out.push({ key: full.slice(SECTION.length + 1), userOnly: spec.scope === "machine" });
    }
  }
  return out;
}

/** A user-only setting: the user's own value, else the default (workspace values are ignored). */
function userValue<T>(config: vscode.WorkspaceConfiguration, key: string, fallback: T): T {
  const seen = config.inspect<T>(key);
  return seen?.globalValue ?? seen?.defaultValue ?? fallback;
}

/** The server settings the user has set (camelCase, as the server accepts them); unset ones
 *  are left out so that the server's own defaults apply. `userOnly`: the user-only settings
 *  (from the user's settings alone), else the others (the workspace may set those). */
export function serverSettings(
  userOnly: boolean,
  config = vscode.workspace.getConfiguration(SECTION),
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const setting of declaredSettings()) {
    if (SERVER_KEYS.includes(setting.key) || setting.userOnly !== userOnly) continue;
    const seen = config.inspect(setting.key);
    const value = userOnly
      ? seen?.globalValue
      : seen?.workspaceFolderValue ?? seen?.workspaceValue ?? seen?.globalValue;
    if (value !== undefined) out[setting.key] = value;
  }
  return out;
}

function serverOptions(): ServerOptions {
  const config = vscode.workspace.getConfiguration(SECTION);
  const python = userValue(config, "server.pythonPath", "").trim();
  const args = userValue<string[]>(config, "server.args", []);
  const env = { ...process.env, ...userValue<Record<string, string>>(config, "server.env", {}) };
  const command = python || userValue(config, "server.path", "latent").trim() || "latent";
  const commandArgs = python ? ["-m", "lsp_server", "lsp", ...args] : ["lsp", ...args];
  output.info(`Starting ${command} ${commandArgs.join(" ")}`);
  // no `transport`: stdio is the default (TransportKind.stdio would append `--stdio`, which `latent lsp` also accepts)
  return { command, args: commandArgs, options: { env } };
}

// ---------------------------------------------------------------------------------------------
// Status bar

function showStatus(status: Status | undefined, clientState?: string): void {
  const item = statusItem;
  item.command = "latent.showStats";
  item.backgroundColor = undefined;
  if (!status) {
    item.text = clientState === "stopped" ? "$(circle-slash) Latent" : "$(loading~spin) Latent";
    item.tooltip = clientState === "stopped" ? "Latent: the server is not running" : "Latent: starting";
  } else if (status.state === "error") {
    item.text = "$(error) Latent";
    item.backgroundColor = new vscode.ThemeColor("statusBarItem.errorBackground");
    item.tooltip = `Latent: ${status.message ?? "error"}`;
  } else if (status.state === "loading") {
    item.text = "$(loading~spin) Latent";
    item.tooltip = `Latent: ${status.message ?? "loading the model"}`;
  } else if (!status.enabled) {
    item.text = "$(circle-slash) Latent";
    item.tooltip = "Latent: completion is off (Latent: Toggle Completion)";
  } else {
    const ms = status.lastLatencyMs;
    item.text = ms == null ? "$(check) Latent" : `$(check) Latent ${Math.round(ms)} ms`;
    const cache = status.cache ?? {};
    const lines = [`Latent: ready, model ${status.model}`];
    if (status.message) lines.push(status.message);
    if (ms != null) lines.push(`last completion ${ms.toFixed(0)} ms`);
    if (cache.tokens != null) {
      const hit = cache.hitRate != null ? `, hit rate ${(100 * cache.hitRate).toFixed(0)} %` : "";
      lines.push(`cache ${cache.tokens} tokens${hit}`);
    }
    lines.push("Click for statistics");
    item.tooltip = lines.join("\n");
  }
  item.show();
}

// ---------------------------------------------------------------------------------------------
// The client

async function start(context: vscode.ExtensionContext): Promise<void> {
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    initializationOptions: { ...serverSettings(false), ...serverSettings(true) },
    outputChannel: output,
    traceOutputChannel: output,
  };
  const c = new LanguageClient("latent", "Latent", serverOptions(), clientOptions);
  client = c;
  lastStatus = undefined;
  showStatus(undefined);
  c.onDidChangeState((e) => {
    if (e.newState === State.Stopped) showStatus(undefined, "stopped");
  });
  c.onNotification("latent/status", (status: Status) => {
    lastStatus = status;
    showStatus(status);
  });
  try {
    await c.start();
  } catch (e) {
    output.info(`The server did not start: ${e}`);
    showStatus({ state: "error", enabled: true, model: "", message: `the server did not start (${e})` });
    void vscode.window
      .showErrorMessage("Latent: the language server did not start. Check `latent.server.path`.", "Show Log")
      .then((choice) => choice && output.show());
  }
}

async function stop(): Promise<void> {
  const c = client;
  client = undefined;
  if (c) {
    try {
      await c.stop(5000);
    } catch (e) {
      output.info(`Stopping the server: ${e}`);
    }
  }
}

async function serverCommand<T>(command: string, ...args: unknown[]): Promise<T | undefined> {
  if (!client || !client.isRunning()) {
    void vscode.window.showWarningMessage("Latent: the server is not running.");
    return undefined;
  }
  return client.sendRequest<T>("workspace/executeCommand", { command, arguments: args });
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel("Latent", { log: true });
  statusItem = vscode.window.createStatusBarItem("latent.status", vscode.StatusBarAlignment.Right, 100);
  statusItem.name = "Latent";
  context.subscriptions.push(output, statusItem);

  context.subscriptions.push(
    vscode.commands.registerCommand("latent.toggleCompletion", async () => {
      const result = await serverCommand<{ enabled: boolean }>("latent.toggle");
      if (result) {
        if (lastStatus) showStatus({ ...lastStatus, enabled: result.enabled });
        void vscode.window.setStatusBarMessage(`Latent: completion ${result.enabled ? "on" : "off"}`, 3000);
      }
    }),
    vscode.commands.registerCommand("latent.showStats", async () => {
      const stats = await serverCommand<Record<string, unknown>>("latent.stats");
      if (!stats) return;
      output.info(`Statistics ${new Date().toISOString()}:`);
      output.info(JSON.stringify(stats, null, 2));
      output.show(true);
    }),
    vscode.commands.registerCommand("latent.clearServerCache", async () => {
      const result = await serverCommand<{ cleared: boolean }>("latent.clearCache");
      if (result) void vscode.window.setStatusBarMessage("Latent: cache cleared", 3000);
    }),
    vscode.commands.registerCommand("latent.restartServer", async () => {
      await stop();
      await start(context);
    }),
    vscode.commands.registerCommand("latent.showLog", () => output.show()),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (!e.affectsConfiguration(SECTION)) return;
      const restart = declaredSettings().filter((s) => s.userOnly); // the server.* keys too
      if (restart.some((s) => e.affectsConfiguration(`${SECTION}.${s.key}`))) {
        output.info("A server or user-only setting changed: restarting the server.");
        await stop();
        await start(context);
      } else if (client?.isRunning()) {
        await client.sendNotification("workspace/didChangeConfiguration", {
          settings: { [SECTION]: serverSettings(false) },
        });
      }
    }),
  );
  await start(context);
}

export async function deactivate(): Promise<void> {
  await stop();
}
