"""`latent train corpus`: download the manifest's packages, keep the permissively licensed,
filtered, de-duplicated `.py` files, and write the report.

    python -m model.train corpus [--cache ~/.cache/latent/corpus] [--jobs 4]

The cache folder holds, after a run:

    downloads/      the archives pip fetched (kept: a second run needs no network)
    files/          the kept files, `{package}/{path}` (`python-stdlib/` for the standard
                    library): what `latent train --corpus-dir CACHE/files` trains on
    report.json     every package: version, license, outcome, files, bytes, drops per filter
    report.md       the same as tables, per package and per license (the model card's source)

Sources are read in a fixed order — the standard library, then the manifest from top to
bottom, each package's files sorted by path — so exact and near duplicates keep their first
copy and a re-run gives the same files.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sysconfig
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from model.train import licenses
from model.train.filters import REASONS, NearDuplicates, Overlap, file_problem
from model.train.sources import HELDOUT, MANIFEST, Pin, download, read_archive, read_manifest, vendored_heldout

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = Path("~/.cache/latent/corpus")
STDLIB_NAME = "python-stdlib"


class Filter:
    """The running state of the filters over every source: hashes and signatures kept so far."""

    def __init__(self, overlap: Overlap, own_code: set[str]):
        self.overlap, self.own_code = overlap, own_code
        self.seen: set[bytes] = set()
        self.near = NearDuplicates()

    def problem(self, data: bytes) -> str | None:
        """Why `data` is dropped, or None if it is kept (and remembered as kept)."""
        reason = file_problem(data)
        if reason:
            return reason
        digest = hashlib.sha256(data).digest()
        if digest in self.seen:
            return "exact_duplicate"
        if digest.hex() in self.own_code:
            return "project_code"
        text = data.decode("utf-8")
        if self.overlap.hits(text):
            return "humaneval"
        if self.near.check_and_add(text):
            return "near_duplicate"
        self.seen.add(digest)
        return None


def own_code_hashes(root: Path = REPO) -> set[str]:
    """sha256 of this project's own `.py` files: held out like the evaluation packages."""
    skip = {".venv", "node_modules", ".git", "runs"}
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.py")
            if not skip & set(p.relative_to(root).parts)}


def stdlib_files() -> dict[str, bytes]:
    """The running interpreter's standard library `.py` files (site-packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.py"))
            if "site-packages" not in p.relative_to(root).parts and p.is_file()}


def keep_files(entry: dict, files: dict[str, bytes], flt: Filter, out: Path) -> None:
    """Run the filters over one package's files and write the kept ones under `out`."""
    drops = Counter()
    for rel in sorted(files):
        data = files[rel]
        reason = flt.problem(data)
        if reason:
            drops[reason] += 1
            continue
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        entry["kept_files"] += 1
        entry["kept_bytes"] += len(data)
    entry["files"] = len(files)
    entry["dropped"] = dict(sorted(drops.items()))


def collect(cache: Path, manifest: Path = MANIFEST, humaneval: Path | None = None,
            stdlib: bool = True, jobs: int = 4, log=print) -> dict:
    """The whole command: downloads, filters, `files/`, `report.json`, `report.md`. The files
    that share lines with HumanEval go: with the windows of the infilling files in the folder
    `humaneval`, or else the committed ones (filters.WINDOWS_FILE)."""
    t0 = time.time()
    pins = read_manifest(manifest)
    if bad := [str(p) for p in pins if p.name in HELDOUT]:
        raise ValueError(f"the manifest lists held-out packages: {', '.join(bad)}")
    downloads = cache / "downloads"
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        fetched = list(pool.map(lambda pin: download(pin, downloads), pins))
    log(f"corpus: {sum(a is not None for a, _ in fetched)}/{len(pins)} packages in {downloads} "
        f"({time.time() - t0:.0f} s)")

    overlap = Overlap.humaneval(humaneval) if humaneval else Overlap.load()
    flt = Filter(overlap, own_code_hashes())
    files_dir = cache / "files"
    shutil.rmtree(files_dir, ignore_errors=True)
    packages = []
    if stdlib:
        entry = _entry(STDLIB_NAME, sysconfig.get_python_version(), "PSF-2.0", "kept", "")
        keep_files(entry, stdlib_files(), flt, files_dir / STDLIB_NAME)
        packages.append(entry)
    for pin, (archive, error) in zip(pins, fetched, strict=True):
        packages.append(_package(pin, archive, error, flt, files_dir))
        e = packages[-1]
        log(f"  {pin}: {e['status']}, {e['kept_files']}/{e['files']} files, {e['kept_bytes'] / 1e6:.1f} MB "
            f"({time.time() - t0:.0f} s)")
    report = _report(packages, manifest, humaneval, overlap, time.time() - t0)
    (cache / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (cache / "report.md").write_text(report_markdown(report))
    t = report["totals"]
    log(f"corpus: kept {t['kept_files']:,} files, {t['kept_bytes'] / 1e6:.1f} MB from "
        f"{t['packages_kept']} packages → {files_dir} (report: {cache / 'report.md'})")
    return report


def _entry(name, version, license, status, archive) -> dict:
    return {"name": name, "version": version, "license": license, "status": status,
            "archive": archive, "files": 0, "kept_files": 0, "kept_bytes": 0, "dropped": {}}


def _package(pin: Pin, archive: Path | None, error: str, flt: Filter, files_dir: Path) -> dict:
    if archive is None:
        return _entry(pin.name, pin.version, "?", f"download failed: {error}", "")
    try:
        content = read_archive(archive)
    except Exception as e:                      # a corrupt or odd archive drops its package only
        return _entry(pin.name, pin.version, "?", f"unreadable archive: {type(e).__name__}", archive.name)
    label, allowed = licenses.classify(content.metadata)
    entry = _entry(pin.name, pin.version, label, "kept", archive.name)
    entry["files"] = len(content.files)
    if not allowed:
        entry["status"] = "dropped: license"
    elif vendored := vendored_heldout(content.files):
        entry["status"] = f"dropped: vendors held-out {', '.join(vendored)}"
    else:
        keep_files(entry, content.files, flt, files_dir / pin.name)
    return entry


def _report(packages: list[dict], manifest: Path, humaneval, overlap: Overlap, seconds: float) -> dict:
    kept = [p for p in packages if p["status"] == "kept"]
    drops = Counter()
    for p in kept:
        drops.update(p["dropped"])
    by_license: dict[str, dict] = {}
    for p in packages:
        row = by_license.setdefault(p["license"], {"packages": 0, "kept_packages": 0, "kept_files": 0,
                                                    "kept_bytes": 0})
        row["packages"] += 1
        row["kept_packages"] += p["status"] == "kept"
        row["kept_files"] += p["kept_files"]
        row["kept_bytes"] += p["kept_bytes"]
    statuses = Counter(p["status"].split(":")[0] if p["status"].startswith("download") else p["status"]
                       for p in packages)
    return {
        "manifest": str(manifest.name),
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "created": time.strftime("%Y-%m-%d"),
        "seconds": round(seconds),
        "heldout_packages": sorted(HELDOUT),
        "humaneval": {"folder": humaneval.name if humaneval else "model/train/humaneval_windows.bin",
                      "windows": len(overlap.windows)},
        "filters": {"reasons": list(REASONS) + ["project_code"], "near_duplicate": "MinHash of 3-line "
                    "shingles of normalised lines, 128 permutations, LSH 16 bands × 8 rows, "
                    "estimated Jaccard ≥ 0.85", "humaneval": "≥ 4 consecutive non-trivial normalised lines in "
                    "common with a HumanEval prompt, suffix or solution"},
        "totals": {"packages": len(packages), "packages_kept": len(kept),
                   "outcomes": dict(sorted(statuses.items())),
                   "files": sum(p["files"] for p in kept),
                   "kept_files": sum(p["kept_files"] for p in kept),
                   "kept_bytes": sum(p["kept_bytes"] for p in kept),
                   "dropped": dict(sorted(drops.items()))},
        "by_license": dict(sorted(by_license.items(), key=lambda kv: -kv[1]["kept_bytes"])),
        "packages": packages,
    }


def report_markdown(report: dict) -> str:
    """report.md: the totals, a table per license and a table per package."""
    t = report["totals"]
    reasons = report["filters"]["reasons"]
    lines = [
        "# Training corpus report", "",
        f"Manifest `{report['manifest']}` (sha256 `{report['manifest_sha256']}`), built {report['created']} "
        f"in {report['seconds'] / 60:.0f} min by `latent train corpus`.", "",
        f"- **{t['kept_files']:,} files, {t['kept_bytes'] / 1e6:.1f} MB kept** from {t['packages_kept']} of "
        f"{t['packages']} sources (the CPython standard library and the manifest's packages).",
        "- Package outcomes: " + ", ".join(f"{k} {v}" for k, v in t["outcomes"].items()) + ".",
        f"- Files dropped by each filter (in kept packages, {t['files']:,} files seen): "
        + ", ".join(f"{k} {t['dropped'].get(k, 0):,}" for k in reasons) + ".",
        f"- Near duplicates: {report['filters']['near_duplicate']}.",
        f"- HumanEval overlap: {report['filters']['humaneval']} "
        f"({report['humaneval']['windows']:,} windows).",
        f"- Held out for evaluation, never trained on: {', '.join(report['heldout_packages'])}, and this "
        "project's own code.", "",
        "## Per license", "",
        "| license | packages | kept | files kept | MB kept |", "|---|---|---|---|---|",
    ]
    for name, row in report["by_license"].items():
        lines.append(f"| {name} | {row['packages']} | {row['kept_packages']} | {row['kept_files']:,} | "
                     f"{row['kept_bytes'] / 1e6:.2f} |")
    lines += ["", "## Per package", "",
              "| package | version | license | outcome | files | kept | MB kept | " + " | ".join(reasons) + " |",
              "|" + "---|" * (7 + len(reasons))]
    for p in report["packages"]:
        drops = " | ".join(str(p["dropped"].get(r, "")) for r in reasons)
        lines.append(f"| {p['name']} | {p['version']} | {p['license'][:40]} | {p['status']} | {p['files']} | "
                     f"{p['kept_files']} | {p['kept_bytes'] / 1e6:.2f} | {drops} |")
    return "\n".join(lines) + "\n"
