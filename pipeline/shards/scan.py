"""Lists an image folder for shard_dataset.py: SRC and DEST checked, class folders, image files with their size and
modification time, and the inputs skipped or ignored with an accurate reason (a symlink loop, a dangling link, an
unreadable or oversized file) before any image is read."""
from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from pipeline import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
MAX_SOURCE_BYTES = 2**30  # a larger "image" (a sparse file, a disk image named .jpg) is skipped, not read into memory
# A folder named like a dataset split (train, val, test2017 ...): as class folders, most likely a folder of splits.
SPLIT_NAME = re.compile(r"(train|training|trainval|val|valid|validation|test|testing|eval|evaluation|dev|holdout)"
                        r"([_-]?\d+)?", re.IGNORECASE)

@dataclass(frozen=True, slots=True)  # slots: a million of these stay small
class SourceFile:
    path: str  # relative to SRC, "/"-separated
    size: int
    label: int | None
    mtime_ns: int  # st_mtime_ns: a file replaced since its shard was written makes that shard be rebuilt


@dataclass
class SourceScan:
    classes: list[str] | None
    files: list[SourceFile]  # sorted by path
    skipped: list[dict]  # bad inputs found while scanning: {"path", "reason", "shard": None}
    ignored: list[dict]  # {"path", "reason"}


# ---------------------------------------------------------------------------------------------------------- scan

def link_problem(path: str | os.PathLike) -> str | None:
    """Why the symlink at `path` cannot be followed (a loop, or a missing target); None when it is not a broken
    symlink."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symlink loop (too many levels of symbolic links)"
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"dangling symlink: its target {os.readlink(path)!r} does not exist"
    return None


def _add_file(src: Path, rel: str, label: int | None, scan: SourceScan) -> None:
    try:
        st = os.stat(src / rel)
    except OSError as err:
        reason = link_problem(src / rel) or f"unreadable: {err.strerror}"
        scan.skipped.append({"path": rel, "reason": reason, "shard": None})
        return
    if not stat.S_ISREG(st.st_mode):
        scan.skipped.append({"path": rel, "reason": "not a regular file", "shard": None})
    elif st.st_size == 0:
        scan.skipped.append({"path": rel, "reason": "empty file (0 bytes)", "shard": None})
    elif st.st_size > MAX_SOURCE_BYTES:
        scan.skipped.append({"path": rel, "reason": f"too large for an image file: {st.st_size:,} bytes (at most "
                                                    f"{MAX_SOURCE_BYTES:,})", "shard": None})
    else:
        scan.files.append(SourceFile(rel, st.st_size, label, st.st_mtime_ns))


def _is_dir(entry: os.DirEntry) -> bool:
    """Whether the entry is a folder, following symlinks; False when that cannot be known (e.g. a symlink loop)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _walk(src: Path, top: str, label: int | None, scan: SourceScan, seen: set) -> None:
    """Adds every image file under SRC/top (recursively, symlinked folders followed once) to `scan`."""
    stack = [top]
    while stack:
        rel = stack.pop()
        try:
            entries = sorted(os.scandir(src / rel), key=lambda e: e.name)
        except OSError as err:
            scan.skipped.append({"path": rel + "/", "reason": f"unreadable folder: {err.strerror}", "shard": None})
            continue
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            if _is_dir(entry):
                folder = os.stat(entry.path)
                if (folder.st_dev, folder.st_ino) in seen:
                    scan.ignored.append({"path": path + "/", "reason": "folder already scanned through another path"})
                else:
                    seen.add((folder.st_dev, folder.st_ino))
                    stack.append(path)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                _add_file(src, path, label, scan)
            else:
                problem = link_problem(entry.path)  # a folder or an image may stand behind it: say what is wrong
                scan.ignored.append({"path": path, "reason": f"{problem}, not followed" if problem else
                                     "not an image file name"})


def scan_source(src: Path, labels: str) -> SourceScan:
    """Lists SRC. labels="folders": class index = position in the sorted sub-folder names (torchvision's
    ImageFolder); files directly in SRC are ignored. labels="none": every image file under SRC, unlabeled."""
    root = os.stat(src)
    seen = {(root.st_dev, root.st_ino)}
    if labels == "none":
        scan = SourceScan(None, [], [], [])
        _walk(src, "", None, scan, seen)
    else:
        entries = sorted(os.scandir(src), key=lambda e: e.name)
        for entry in entries:
            if problem := link_problem(entry.path):  # a lost class folder would shift every later class index
                raise DataError(f"{entry.path}: {problem}. Fix or remove it: the class index of each folder is "
                                f"its position among SRC's folders")
        scan = SourceScan([e.name for e in entries if _is_dir(e)], [], [], [])
        scan.ignored += [{"path": e.name, "reason": "not inside a class folder"} for e in entries if not _is_dir(e)]
        for label, name in enumerate(scan.classes):
            folder = os.stat(src / name)
            seen.add((folder.st_dev, folder.st_ino))
            _walk(src, name, label, scan, seen)
    scan.files.sort(key=lambda f: f.path)
    return scan


def classes_in_words(classes: list[str] | None, shown: int = 6) -> str:
    """"10 classes: digit_0, digit_1, … digit_9": the count, and the names (the first two and the last of many)."""
    if classes is None:
        return "no classes (--labels none)"
    names = ", ".join(classes) if len(classes) <= shown else f"{classes[0]}, {classes[1]}, … {classes[-1]}"
    return f"{len(classes):,} class{'' if len(classes) == 1 else 'es'}: {names}"


def split_folders(scan: SourceScan) -> list[str]:
    """The top folders of SRC named like splits (train, val ...), when they look like a folder of splits rather than
    classes: two or more of them, or the only class folder. A class may be called "test": one among others is no
    sign."""
    if scan.classes is not None:
        names = scan.classes
    else:  # --labels none: the top folders that hold images
        names = sorted({f.path.split("/", 1)[0] for f in scan.files if "/" in f.path})
    splits = [name for name in names if SPLIT_NAME.fullmatch(name)]
    alone = scan.classes is not None and len(names) == 1
    return splits if len(splits) >= 2 or (splits and alone) else []


def source_lines(scan: SourceScan, src: str, dest: str) -> tuple[str, str | None]:
    """shard_dataset.py's start line, SRC's image and class count with a few class names; and the warning when SRC's
    top folders are named like splits (None otherwise): train/ and val/ would otherwise become two classes (or, with
    --labels none, one set) without a word. A warning, not an error: a class may be called "test"."""
    images = len(scan.files)
    start = f"{src}: {images:,} image{'' if images == 1 else 's'} in {classes_in_words(scan.classes)}"
    splits = split_folders(scan)
    if not splits:
        return start, None
    what, flag = ("class folders", "") if scan.classes is not None else ("folders", " --labels none")
    unlabeled = "" if scan.classes is not None else ", whose images --labels none puts in one set"
    return start, (f"warning: {src} holds {what} named like splits ({', '.join(splits)}){unlabeled}: shard each split "
                   f"on its own: shard_dataset.py {os.path.join(src, splits[0])} {os.path.join(dest, splits[0])}"
                   f"{flag}")


def folder_problem(path: Path) -> str | None:
    """Why `path` cannot be (or become, by mkdir) a folder; None when it can."""
    for at in (path, *path.parents):
        if at.is_dir():
            return None
        if problem := link_problem(at):
            return problem if at == path else f"{at} is a {problem}"
        if os.path.lexists(at):
            return "it is a file, not a folder" if at == path else f"{at} is a file, not a folder"
    return None


def check_paths(src: str | os.PathLike, dest: str | os.PathLike) -> tuple[Path, Path]:
    """SRC and DEST as absolute paths with symlinks resolved; DataError when they cannot serve."""
    src, dest = Path(src).absolute(), Path(dest).absolute()
    if not src.is_dir():
        raise DataError(f"SRC {src}: {folder_problem(src) or 'no such folder'}")
    if problem := folder_problem(dest):
        raise DataError(f"DEST {dest}: {problem}; DEST must be a folder (it is created if missing)")
    src, dest = Path(os.path.realpath(src)), Path(os.path.realpath(dest))
    if dest == src or src in dest.parents:
        raise DataError(f"DEST {dest} must not be SRC or inside it (SRC is only ever read)")
    return src, dest
