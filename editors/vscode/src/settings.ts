// The extension's settings: which `latent.*` settings go to the server and from where, and the
// server command with `~`, `${userHome}` and `${workspaceFolder}` expanded and looked up.
//
// Settings that choose where code goes or what runs (the server command and its environment,
// the model, the engine, its API key variable, ...) are `"scope": "machine"` in package.json:
// they are read from the user's settings only, never from a workspace's `.vscode/settings.json`
// (a cloned repository could set them), and travel to the server as initializationOptions —
// the server refuses them in workspace/didChangeConfiguration. A change to one restarts it.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as vscode from "vscode";

export const SECTION = "latent";
const SERVER_KEYS = ["server.path", "server.pythonPath", "server.args", "server.env"];
const PATH_KEYS = ["model", "tokenizer"]; // server settings that name a file or folder

interface Setting {
  key: string; // without the "latent." prefix
  userOnly: boolean; // "scope": "machine"
}

export function declaredSettings(): Setting[] {
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

function workspaceFolder(): string | undefined {
  return vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
}

/** `~` at the start, `${userHome}` and `${workspaceFolder}` (the first folder open) expanded. */
export function expandPath(value: string): string {
  let out = value.trim().replace(/\$\{userHome\}/g, os.homedir());
  const folder = workspaceFolder();
  if (folder !== undefined) out = out.replace(/\$\{workspaceFolder\}/g, folder);
  if (out === "~" || out.startsWith("~/") || out.startsWith(`~${path.sep}`)) out = path.join(os.homedir(), out.slice(1));
  return out;
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
    if (value === undefined) continue;
    out[setting.key] = PATH_KEYS.includes(setting.key) && typeof value === "string" && value ? expandPath(value) : value;
  }
  return out;
}

export interface ServerCommand {
  setting: string; // the setting that names the program: "server.path" or "server.pythonPath"
  given: string; // as written there
  command: string; // expanded and looked up: a full path, or `given` expanded when not found
  found: boolean;
  args: string[];
  env: NodeJS.ProcessEnv;
}

/** The command that runs `latent lsp`, from the user's settings. */
export function serverCommand(): ServerCommand {
  const config = vscode.workspace.getConfiguration(SECTION);
  const python = userValue(config, "server.pythonPath", "").trim();
  const args = userValue<string[]>(config, "server.args", []);
  const env = { ...process.env, ...userValue<Record<string, string>>(config, "server.env", {}) };
  const setting = python ? "server.pythonPath" : "server.path";
  const given = python || userValue(config, "server.path", "latent").trim() || "latent";
  const expanded = expandPath(given);
  const found = findProgram(expanded, env.PATH ?? env.Path) ?? findProgram(expanded, INSTALL_DIRS.join(path.delimiter));
  return {
    setting,
    given,
    command: found ?? expanded,
    found: found !== undefined,
    args: python ? ["-m", "lsp_server", "lsp", ...args] : ["lsp", ...args],
    env,
  };
}

/** Where installers put commands that an editor started from a desktop menu (not a login
 *  shell) may not have on its PATH: `make install-user`, `pip install --user` and pipx all use
 *  ~/.local/bin. Looked in after PATH, for a bare command name only. */
const INSTALL_DIRS = [path.join(os.homedir(), ".local", "bin")];

/** `program`'s full path: itself if it names a file (relative: to the workspace folder), else
 *  the first match on `searchPath`; undefined when there is no such executable file. */
export function findProgram(program: string, searchPath: string | undefined): string | undefined {
  const isPath = program.includes("/") || program.includes(path.sep);
  const extensions = process.platform === "win32" ? ["", ...(process.env.PATHEXT ?? ".EXE;.CMD;.BAT").split(";")] : [""];
  const candidates = isPath
    ? [path.resolve(workspaceFolder() ?? process.cwd(), program)]
    : (searchPath ?? "").split(path.delimiter).filter(Boolean).map((dir) => path.join(dir, program));
  for (const candidate of candidates) {
    for (const ext of extensions) {
      try {
        fs.accessSync(candidate + ext, fs.constants.X_OK);
        if (fs.statSync(candidate + ext).isFile()) return candidate + ext;
      } catch {
        // not there, or not executable: the next one
      }
    }
  }
  return undefined;
}
