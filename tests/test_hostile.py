"""Concurrent writers of one file never share a temporary file, and a link is replaced, not followed (issue 38)."""

import json
import multiprocessing
from pathlib import Path

from resnet_repro.files import write_json_atomically


def write_many(path: str, writer: int) -> None:
    for count in range(100):
        write_json_atomically(Path(path), {"writer": writer, "count": count})


def test_writers_of_one_file_never_share_a_temporary_file_and_a_link_is_replaced_not_followed(tmp_path):
    target = tmp_path / "experiment.json"
    with multiprocessing.get_context("fork").Pool(6) as pool:  # six `run`s of one experiment write its manifest
        pool.starmap(write_many, [(str(target), writer) for writer in range(6)])
    assert json.loads(target.read_text())["count"] == 99
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.json"]  # no temporary file left behind
    outside = tmp_path / "mine.txt"
    outside.write_text("the user's own file\n")
    (tmp_path / "summary.json").symlink_to(outside)
    write_json_atomically(tmp_path / "summary.json", {"status": "running"})
    assert outside.read_text() == "the user's own file\n" and not (tmp_path / "summary.json").is_symlink()
