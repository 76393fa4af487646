"""Reading files that may come from elsewhere (YAML, JSON) and writing files, and whole output folders, so that a
crash or a full disk never leaves a half-written one in place of a good one."""

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` into a temporary file beside the target, flushed to disk, then renamed over it: a rename within
    one folder is atomic (a temporary file elsewhere, e.g. in /tmp on another filesystem, could only be copied).
    If anything fails the temporary file is removed and the target is as it was. The temporary file is this
    process's own (`<name>.<pid>.<random>.tmp`, created exclusively): two processes writing one file never share
    one, and a link or file planted under its name is never written through. A target that is a symbolic link is
    replaced by the file, never followed."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: tmp.write_text(text))


def write_json_atomically(path: Path, data: dict) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): restore it or delete it") from error


def check_nodes(root: yaml.Node, path: Path, size: int) -> None:
    """Walks the document as its aliases would expand it, stopping beyond what `size` characters can hold;
    refuses duplicate keys (YAML would keep the last one without a word). Without aliases a document has at most
    about one node per character; aliases let a few characters stand for a huge tree (an alias bomb: nine lists
    of nine aliases of the one before are 9^9 nodes)."""
    limit = 2 * size + 1000
    stack, count = [root], 0
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            raise ValueError(f"{path}: its aliases (*name) expand to more than {limit:,} YAML nodes, far more than "
                             f"its {size:,} characters hold (an alias bomb?); "
                             f"refused before expanding it: write the values out")
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.value == "<<":  # <<: a merge, may repeat keys
                    continue
                if key.value in seen:
                    raise ValueError(f"{path} line {key.start_mark.line + 1}: the key {key.value!r} is given twice in "
                                     f"one mapping (YAML would keep only the last): write each key once")
                seen.add(key.value)
            stack += [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


def read_yaml(path: Path) -> Any:
    """A YAML file as plain data (safe: no tags that build objects), refused in one line naming the file if it
    is not valid YAML, gives a key twice, or expands far beyond its size. Every YAML file the project reads
    itself (experiment files, recipes, a run's config.yaml) is read here."""
    path = Path(path)
    text = path.read_text()
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_nodes(node, path, len(text))
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from error
    finally:
        loader.dispose()


MARKER = ".resnet-repro-output"  # in every folder this tool writes, listing the files it wrote


def check_replaceable(out: Path) -> None:
    """`out` may be replaced only if it is missing, empty, or a folder this tool wrote that holds nothing else:
    anything else is refused in one line, before any work, and never deleted."""
    if out.is_symlink():
        raise ValueError(f"--out {out} is a symbolic link: name the folder itself (a link would be replaced by a "
                         f"folder, or lead the output elsewhere)")
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out} is a file: name a folder for the output (default results/<name>)")
    present = {p.name for p in out.iterdir()}
    if not present:
        return
    marker = out / MARKER
    if not marker.is_file():
        raise ValueError(f"--out {out} is a folder this tool did not write ({len(present)} entries, no {MARKER}): "
                         f"choose a new or empty folder; nothing in it was touched")
    foreign = sorted(present - set(marker.read_text().split()) - {MARKER})
    if foreign:
        raise ValueError(f"--out {out} holds files this tool did not write ({', '.join(foreign[:5])}): move them "
                         f"away or choose another folder; nothing in it was touched")


@contextlib.contextmanager
def staged(out: Path):
    """Yields an empty folder to write into; on success it replaces `out` whole, on failure it is removed and
    `out` stays as it was. Only a folder that this tool wrote is replaced (see check_replaceable)."""
    out = Path(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private (0700); the output is shared as the umask says
    try:
        yield staging
        (staging / MARKER).write_text("".join(f"{p.name}\n" for p in sorted(staging.iterdir())))
        check_replaceable(out)  # again: something may have been put there while the output was made
        if out.exists():  # swap in the new folder, then drop the old one, moved into a folder made for it here
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
            out.rename(old / out.name)
            staging.rename(out)
            shutil.rmtree(old)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
