// Latent for VS Code: starts `latent lsp` and lets vscode-languageclient show its inline
// completions (LSP 3.18 textDocument/inlineCompletion) as ghost text. Adds a status bar item
// fed by the server's `latent/status` notification (status.ts), commands (statistics,
// snooze, ...), and the "Latent" output channel, which shows the server's log once.
import * as readline from "node:readline";
import type { Readable } from "node:stream";
import * as vscode from "vscode";
import {
  LanguageClient,
  LanguageClientOptions,
  LogMessageNotification,
  ServerOptions,
  State,
} from "vscode-languageclient/node";
import { SECTION, declaredSettings, serverCommand, serverSettings } from "./settings";
import { renderStats, Stats } from "./statistics";
import { Status, StatusItem } from "./status";

const STATS_URI = vscode.Uri.from({ scheme: "latent-stats", path: "Latent Statistics.md" });

let client: LanguageClient | undefined;
let output: vscode.LogOutputChannel;
let status: StatusItem;
let stopped = false;
let statsText = "";
const statsChanged = new vscode.EventEmitter<vscode.Uri>();

function manual(): boolean {
  return vscode.workspace.getConfiguration(SECTION).get<string>("trigger") === "manual";
}

function render(): void {
  status.render({ stopped, manual: manual() });
}

// ---------------------------------------------------------------------------------------------
// The server's log
//
// The server writes each log record to stderr and, once initialized, also sends it as
// window/logMessage (lsp_server/logs.py). stderr alone has them all — what is written before
// the connection is up, other libraries' warnings, a crash's traceback — so the channel shows
// stderr, each record at its own level, and window/logMessage is not shown a second time.

const RECORD = /^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$/;

function showServerLog(input: Readable, channel: vscode.LogOutputChannel): void {
  let level = "INFO"; // a line that is not a record's first (a traceback) keeps the record's level
  readline.createInterface({ input, crlfDelay: Infinity, terminal: false }).on("line", (line) => {
    const record = RECORD.exec(line);
    if (record) [, level, line] = record;
    if (level === "DEBUG") {
      // the server logs debug records only when latent.logLevel = debug: show them
      const visible = channel.logLevel !== vscode.LogLevel.Off && channel.logLevel <= vscode.LogLevel.Debug;
      (visible ? channel.debug : channel.info).call(channel, line);
    } else if (level === "INFO") channel.info(line);
    else if (level === "WARNING") channel.warn(line);
    else channel.error(line);
  });
}

// ---------------------------------------------------------------------------------------------
// The client

/** The settings editor at `latent.KEY`: a user-only ("machine") setting is the remote's in a
 *  remote window (code-server, SSH, WSL, a container), where the User tab does not list it. */
function openSetting(key: string): Thenable<unknown> {
  const query = `${SECTION}.${key}`;
  return vscode.env.remoteName
    ? vscode.commands.executeCommand("workbench.action.openRemoteSettings", { query })
    : vscode.commands.executeCommand("workbench.action.openSettings", query);
}

function serverOptions(): ServerOptions | undefined {
  const server = serverCommand();
  if (!server.found) {
    const given = server.given === server.command ? server.given : `${server.given} (${server.command})`;
    const message = `the server command ${given} was not found`;
    output.error(`Latent: ${message}; set latent.${server.setting}.`);
    status.update({ state: "error", enabled: true, model: "", message });
    render();
    const name = `Latent › Server: ${server.setting === "server.path" ? "Path" : "Python Path"}`;
    const where = vscode.env.remoteName ? " in the Remote settings" : "";
    const example = server.setting === "server.path" ? " to the latent command, e.g. ~/latent/.venv/bin/latent" : "";
    void vscode.window
      .showErrorMessage(`Latent: ${message}. Set ${name}${where}${example}.`, "Open Setting")
      .then((choice) => choice && openSetting(server.setting));
    return undefined;
  }
  output.info(`Starting ${server.command} ${server.args.join(" ")}`);
  // no `transport`: stdio is the default (TransportKind.stdio would append `--stdio`, which `latent lsp` also accepts)
  return { command: server.command, args: server.args, options: { env: server.env } };
}

async function start(): Promise<void> {
  status.reset();
  stopped = false;
  render();
  const options = serverOptions();
  if (!options) return;
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    initializationOptions: { ...serverSettings(false), ...serverSettings(true) },
    outputChannel: output,
    traceOutputChannel: output,
    stdioOptions: { stdout: showServerLog, stderr: showServerLog },
    middleware: {
      // trigger = manual: no request while typing (Automatic), only when the user asks (Invoked:
      // the trigger key, or cycling). The server would answer an Automatic request empty anyway.
      provideInlineCompletionItems: (document, position, context, token, next) =>
        context.triggerKind === vscode.InlineCompletionTriggerKind.Automatic && manual()
          ? null
          : next(document, position, context, token),
    },
  };
  const c = new LanguageClient("latent", "Latent", options, clientOptions);
  client = c;
  c.onDidChangeState((e) => {
    stopped = e.newState === State.Stopped;
    render();
  });
  c.onNotification("latent/status", (params: Status) => {
    status.update(params);
    render();
  });
  c.onNotification(LogMessageNotification.type, () => undefined); // stderr shows it (showServerLog)
  try {
    await c.start();
  } catch (e) {
    // vscode-languageclient has already said so (a notification and the log)
    output.error(`The server did not start: ${e}`);
    status.update({ state: "error", enabled: true, model: "", message: `the server did not start (${e})` });
    render();
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

async function restart(): Promise<void> {
  await stop();
  await start();
}

/** workspace/executeCommand on the server (its commands: lsp_server/commands.py). */
async function runOnServer<T>(command: string, ...args: unknown[]): Promise<T | undefined> {
  if (!client || !client.isRunning()) {
    void vscode.window.showWarningMessage("Latent: the server is not running.");
    return undefined;
  }
  return client.sendRequest<T>("workspace/executeCommand", { command, arguments: args });
}

// ---------------------------------------------------------------------------------------------
// Commands (ids unlike the server's latent.toggle, latent.stats, latent.clearCache and
// latent.accepted, which vscode-languageclient registers as VS Code commands itself)

interface Toggled {
  enabled: boolean;
  snoozedUntil?: number;
}

async function toggle(...args: unknown[]): Promise<void> {
  const result = await runOnServer<Toggled>("latent.toggle", ...args);
  if (!result) return;
  const current = status.current;
  if (current) status.update({ ...current, enabled: result.enabled, snoozedUntil: result.snoozedUntil });
  render();
  const said = result.enabled ? "on" : result.snoozedUntil ? "snoozed" : "off";
  void vscode.window.setStatusBarMessage(`Latent: completion ${said}`, 3000);
}

async function snooze(): Promise<void> {
  const choices: (vscode.QuickPickItem & { minutes?: number })[] = [
    { label: "15 minutes", minutes: 15 },
    { label: "1 hour", minutes: 60 },
    { label: "4 hours", minutes: 240 },
    { label: "Until I turn it on", description: "Latent: Toggle Completion" },
  ];
  const choice = await vscode.window.showQuickPick(choices, { title: "Latent: snooze suggestions", placeHolder: "For how long?" });
  if (!choice) return;
  await (choice.minutes ? toggle(false, choice.minutes) : toggle(false));
}

async function showStats(): Promise<void> {
  const stats = await runOnServer<Stats>("latent.stats");
  if (!stats) return;
  statsText = renderStats(stats);
  statsChanged.fire(STATS_URI);
  const document = await vscode.workspace.openTextDocument(STATS_URI);
  try {
    await vscode.commands.executeCommand("markdown.showPreview", document.uri);
  } catch {
    await vscode.window.showTextDocument(document, { preview: true });
  }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel("Latent", { log: true });
  const item = vscode.window.createStatusBarItem("latent.status", vscode.StatusBarAlignment.Right, 100);
  status = new StatusItem(item);
  context.subscriptions.push(output, item, statsChanged);

  context.subscriptions.push(
    vscode.workspace.registerTextDocumentContentProvider(STATS_URI.scheme, {
      onDidChange: statsChanged.event,
      provideTextDocumentContent: () => statsText,
    }),
    vscode.commands.registerCommand("latent.toggleCompletion", () => toggle()),
    vscode.commands.registerCommand("latent.snooze", snooze),
    vscode.commands.registerCommand("latent.showStats", showStats),
    vscode.commands.registerCommand("latent.clearServerCache", async () => {
      const result = await runOnServer<{ cleared: boolean }>("latent.clearCache");
      if (result) void vscode.window.setStatusBarMessage("Latent: cache cleared", 3000);
    }),
    vscode.commands.registerCommand("latent.restartServer", restart),
    vscode.commands.registerCommand("latent.showLog", () => output.show()),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (!e.affectsConfiguration(SECTION)) return;
      render(); // trigger = manual shows in the status bar
      const restartKeys = declaredSettings().filter((s) => s.userOnly); // the server.* keys too
      if (restartKeys.some((s) => e.affectsConfiguration(`${SECTION}.${s.key}`))) {
        output.info("A server or user-only setting changed: restarting the server.");
        await restart();
      } else if (client?.isRunning()) {
        await client.sendNotification("workspace/didChangeConfiguration", {
          settings: { [SECTION]: serverSettings(false) },
        });
      }
    }),
  );
  await start();
}

export async function deactivate(): Promise<void> {
  await stop();
}
