"""`sftpack init`, `sftpack cp`, `sftpack ls`: the shipped files (sftpack.assets) copied into a working folder.

    sftpack init work && cd work          # configs, tasks, pipelines, suites, recipes, Swift plugin, GSM8K sample
    sftpack ls                            # what ships (and where it is read from)
    sftpack cp qwen_gsm8k.yaml my.yaml    # one file (or folder) to edit, like `tune cp`

`init` copies the tree with the checkout's layout, so every command in the READMEs runs in that folder as written
(`llamafactory-cli train train_configs/qwen_gsm8k.yaml` reads `dataset_dir: dataset_info` there; the Swift configs
load `plugins/sftpack_swift_datasets.py` there). It never replaces a file it did not write: `.sftpack-init.json`
records the sha256 of each file it wrote, and a file that is not in it, or was edited since, is one error line
naming it (`--overwrite` replaces it); files it wrote and nobody changed are updated to this version's.
`cp` refuses to replace a different file unless `--overwrite` too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path

from sftpack import assets
from sftpack.errors import SftpackError

MANIFEST = ".sftpack-init.json"
COLLAPSE = 8   # `ls` shows a folder with more files than this as one line (`--all`: every file)
DESCRIBED = (".yaml", ".yml", ".md", ".py", ".txt", ".jsonl")   # `ls` describes these by their first line


def _sha256(path: Path) -> str:
    from sftpack.dataset_info import file_sha256

    return file_sha256(path)


def _copy_file(source: Path, target: Path) -> None:
    """`source` -> `target` through a temp file beside it and a rename (a symlink at `target` is replaced, never
    its target)."""
    from sftpack.artifacts import temp_file

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(target)
    try:
        with os.fdopen(fd, "wb") as handle, source.open("rb") as src:
            shutil.copyfileobj(src, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _refuse(blocked: list[Path], why: str, flag: str = "--overwrite") -> SftpackError:
    more = f" (and {len(blocked) - 1} more: {', '.join(map(str, blocked[1:4]))}{', ...' if len(blocked) > 4 else ''})"
    return SftpackError(f"{blocked[0]}: {why}; nothing was copied. {flag} replaces it"
                        + (more if len(blocked) > 1 else ""))


# -- init ---------------------------------------------------------------------------------------------------------
def init(folder: Path, overwrite: bool = False) -> dict[str, int]:
    """Copy every shipped file into `folder`; return counts {new, updated, unchanged, replaced}."""
    from sftpack import __version__
    from sftpack.artifacts import write_json

    folder = Path(folder)
    manifest_path = folder / MANIFEST
    written: dict[str, str] = {}
    if manifest_path.is_file():
        try:
            written = dict(json.loads(manifest_path.read_text(encoding="utf-8"))["files"])
        except (ValueError, KeyError, TypeError):
            raise SftpackError(f"{manifest_path}: not a file sftpack init can read; move it away (every file in "
                               f"{folder} is then treated as yours)") from None
    plan, blocked = [], []
    for name in assets.files():
        source, target = assets.path(name), folder / name
        sha = _sha256(source)
        if not target.exists() and not target.is_symlink():
            plan.append((name, source, target, sha, "new"))
        elif target.is_file() and not target.is_symlink() and _sha256(target) == sha:
            plan.append((name, source, target, sha, "unchanged"))
        elif target.is_file() and not target.is_symlink() and written.get(name) == _sha256(target):
            plan.append((name, source, target, sha, "updated"))   # ours, as we wrote it: this version's now
        elif overwrite:
            plan.append((name, source, target, sha, "replaced"))
        else:
            blocked.append(target)
    if blocked:
        raise _refuse(blocked, "exists and sftpack init did not write it (or it was edited since)")
    counts = {"new": 0, "updated": 0, "unchanged": 0, "replaced": 0}
    for name, source, target, sha, what in plan:
        if what != "unchanged":
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)   # only with --overwrite: a folder where a shipped file goes
            _copy_file(source, target)
        written[name] = sha
        counts[what] += 1
    write_json(manifest_path, {"schema_version": 1, "sftpack": __version__,
                               "about": "written by `sftpack init`: the sha256 of each file it copied here, so that a "
                                        "later init updates only its own, unchanged files",
                               "files": dict(sorted(written.items()))})
    return counts


def _cmd_init(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    counts = init(folder, overwrite=args.overwrite)
    done = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    print(f"sftpack init: {sum(counts.values())} files from the {assets.source()} into {folder.resolve()} ({done})")
    go = "" if folder.resolve() == Path.cwd().resolve() else f"cd {args.dir} && "
    print("next (the commands of sftpack's README run here as written):\n"
          f"  {go}sftpack prepare gsm8k --source data/gsm8k_sample --out dataset_info/\n"
          "  llamafactory-cli train train_configs/qwen_gsm8k.yaml      # bf16=false on a CPU\n"
          "  swift sft train_configs/swift/qwen_lora_gsm8k.yaml        # --torch_dtype float32 on a CPU\n"
          "  sftpack run benchmarks/pipelines/tiny_cpu.yaml            # the whole job, CPU, offline")
    return 0


# -- cp -----------------------------------------------------------------------------------------------------------
def _folders() -> list[str]:
    names = set()
    for name in assets.files():
        parts = name.split("/")
        names.update("/".join(parts[:end]) for end in range(1, len(parts)))
    return sorted(names)


def find(name: str) -> str:
    """The shipped file or folder NAME means: its path (`train_configs/qwen_gsm8k.yaml`), or a unique ending of
    one, with or without `.yaml` (`qwen_gsm8k`, `swift/qwen_lora_gsm8k.yaml`, `cmmlu-local`)."""
    import difflib

    name = name.strip().rstrip("/")
    everything = assets.files() + _folders()
    if name in everything:
        return name
    matches = sorted({item for item in everything for ending in (name, name + ".yaml")
                      if item.endswith("/" + ending)})
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise SftpackError(f"{name!r} is several shipped files: {', '.join(matches)}; give its path")
    close = difflib.get_close_matches(name, everything + [item.rsplit("/", 1)[-1] for item in everything], n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise SftpackError(f"{name!r}: no shipped file or folder of that name (`sftpack ls` lists them){hint}")


def copy(name: str, dest: str | Path, overwrite: bool = False) -> tuple[Path, int]:
    """Copy the shipped file or folder `name` to `dest`: into it when it is a folder or ends in '/'; (the target,
    files copied)."""
    found = find(name)
    source = assets.path(found)
    into = Path(dest).is_dir() or str(dest).endswith(("/", os.sep))
    target = Path(dest) / source.name if into else Path(dest)
    pairs = [(source, target)] if source.is_file() else \
        [(source / rel.split(f"{found}/", 1)[1], target / rel.split(f"{found}/", 1)[1])
         for rel in assets.files() if rel.startswith(f"{found}/")]
    blocked = [t for s, t in pairs if (t.exists() or t.is_symlink()) and not (t.is_file() and not t.is_symlink()
                                                                            and _sha256(t) == _sha256(s))]
    if blocked and not overwrite:
        raise _refuse(blocked, "exists and differs from the shipped " + found)
    copied = 0
    for src, tgt in pairs:
        if tgt.is_file() and not tgt.is_symlink() and _sha256(tgt) == _sha256(src):
            continue
        if tgt.is_dir() and not tgt.is_symlink():
            shutil.rmtree(tgt)
        _copy_file(src, tgt)
        copied += 1
    return target, copied


def _cmd_cp(args: argparse.Namespace) -> int:
    target, copied = copy(args.name, args.dest, overwrite=args.overwrite)
    found = find(args.name)
    print(f"sftpack cp: {found} -> {target.resolve()}" + ("" if copied else " (already there, unchanged)"))
    for line in notes(target):
        print(f"note: {line}")
    return 0


_RELATIVE = re.compile(r"(?:config|tokenizer|source|path|base):\s*[\"']?(\.\./[^\s,}\"'#]+)")


def notes(target: Path) -> list[str]:
    """What a copied file needs beside it: paths it names relative to its own folder (pipelines, suites) that are
    not there, and the Swift plugin a Swift config loads relative to the folder swift runs in."""
    if not target.is_file() or target.suffix not in (".yaml", ".yml"):
        return []
    text = target.read_text(encoding="utf-8", errors="replace")
    found = []
    missing = sorted({value for value in _RELATIVE.findall(text) if not (target.parent / value).exists()})
    if missing:
        found.append(f"{', '.join(missing)}: not there relative to {target.parent.resolve()}, so sftpack reads the "
                     "shipped copies; copy them beside it, or use `sftpack init` for the whole tree")
    plugin = "plugins/sftpack_swift_datasets.py"
    if plugin in text and not (Path.cwd() / plugin).is_file():
        found.append(f"it loads {plugin} relative to the folder swift runs in; there: sftpack cp {plugin} plugins/")
    return found


# -- ls -----------------------------------------------------------------------------------------------------------
def describe(path: Path) -> str:
    """The first line of a file's leading comment (YAML, Markdown title, Python docstring, text), or a JSON Lines
    file's row count, for `ls`."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace") if path.suffix in DESCRIBED else ""
    except OSError:
        return ""
    if path.suffix == ".jsonl":
        return f"{sum(1 for line in text.splitlines() if line.strip())} rows"
    lines = text.splitlines()[:3]
    for line in lines:
        text = line.strip().lstrip("#").strip().strip('"').strip()
        if text:
            return text if len(text) <= 90 else text[:87] + "..."
    return ""


def listing(everything: bool = False) -> list[str]:
    """Lines of `sftpack ls`: each shipped file with its first comment line; big folders as one line."""
    files = assets.files()
    counts: dict[str, int] = {}
    for name in files:
        folder = name.rsplit("/", 1)[0] if "/" in name else ""
        counts[folder] = counts.get(folder, 0) + 1
    lines, shown = [], set()
    width = min(48, max(len(name) for name in files))
    for name in files:
        folder = name.rsplit("/", 1)[0] if "/" in name else ""
        if not everything and counts[folder] > COLLAPSE:
            if folder not in shown:
                shown.add(folder)
                readme = assets.path(folder) / "README.md"
                about = describe(readme) if readme.is_file() else ""
                lines.append(f"{folder + '/':<{width}}  {counts[folder]} files" + (f": {about}" if about else ""))
            continue
        lines.append(f"{name:<{width}}  {describe(assets.path(name))}")
    return lines


def _cmd_ls(args: argparse.Namespace) -> int:
    print(f"shipped with sftpack (read from the {assets.source()}); `sftpack cp NAME DEST` copies one, "
          "`sftpack init DIR` all:")
    for line in listing(args.all):
        print("  " + line)
    return 0


# -- the command line ----------------------------------------------------------------------------------------------
def add_parsers(sub) -> None:
    """Add `init`, `cp` and `ls` to the sftpack CLI's subparsers."""
    raw = argparse.RawDescriptionHelpFormatter
    init_parser = sub.add_parser(
        "init", help="copy the shipped configs, tasks, pipelines, suites, recipes and Swift plugin into a folder",
        description="Copy every shipped file (`sftpack ls`) into DIR with the checkout's layout, so the README's "
                    "commands run there as written. Never replaces a file it did not write (or one edited since): "
                    "that is one error line naming it; --overwrite replaces it. Files it wrote and nobody changed "
                    "are updated to this version's.",
        epilog="examples:\n  sftpack init work && cd work\n  sftpack init .                 # the current folder\n"
               "  sftpack init work --overwrite  # replace edited copies with the shipped ones", formatter_class=raw)
    init_parser.add_argument("dir", nargs="?", default=".", help="folder to fill (created; default: the current one)")
    init_parser.add_argument("--overwrite", action="store_true",
                             help="replace files sftpack init did not write, or that were edited since")
    init_parser.set_defaults(func=_cmd_init)

    cp = sub.add_parser(
        "cp", help="copy one shipped file or folder to edit it (like `tune cp`)",
        description="Copy the shipped file or folder NAME (a path from `sftpack ls`, or a unique ending of one) to "
                    "DEST, into DEST when it is a folder. A different file at DEST is refused (--overwrite).",
        epilog="examples:\n  sftpack cp train_configs/qwen_gsm8k.yaml my_lora.yaml\n"
               "  sftpack cp qwen_lora_gsm8k my_swift.yaml     # the unique file of that name\n"
               "  sftpack cp eval_tasks my_tasks             # a whole folder, as my_tasks/\n"
               "  sftpack cp constraints.txt .                # the tested pins, for pip -c", formatter_class=raw)
    cp.add_argument("name", help="a shipped file or folder (see `sftpack ls`)")
    cp.add_argument("dest", help="target file, or an existing folder (or one ending in /) to copy into")
    cp.add_argument("--overwrite", action="store_true", help="replace a different file at DEST")
    cp.set_defaults(func=_cmd_cp)

    ls = sub.add_parser("ls", help="list the shipped files (configs, tasks, pipelines, suites, recipes, samples)",
                        description="List what ships with sftpack and where it is read from.",
                        epilog="examples:\n  sftpack ls\n  sftpack ls --all      # every file of the big folders too",
                        formatter_class=raw)
    ls.add_argument("--all", action="store_true", help=f"list every file (default: folders of more than {COLLAPSE} "
                                                       "files as one line)")
    ls.set_defaults(func=_cmd_ls)
