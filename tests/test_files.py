"""Saving replaces files as editors do (cgraph/files.py, used by cg.save and cg.render): links
are followed, permissions and owners kept, a save killed midway leaves nothing that anyone must
clean (unnamed temporary files, or named ones removed by the next save into the folder), and
errors name the path the caller gave."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import cgraph as cg
import cgraph.files as cfiles

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def model(scale: float = 1.0) -> cg.Graph:
    g = cg.Graph("m")
    g.output("y", g.input("x", (2,)) * g.param("w", np.full(2, scale)))
    return g


def w_of(path: Path) -> float:
    return float(cg.load(path).params["w"][0])


def test_a_link_is_followed_and_stays_a_link(tmp_path):
    real = tmp_path / "models" / "real.pb"
    real.parent.mkdir()
    cg.save(model(1.0), real)
    link = tmp_path / "link.pb"
    link.symlink_to(real)
    cg.save(model(2.0), link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert w_of(real) == 2.0 and w_of(link) == 2.0
    dangling = tmp_path / "dangling.pb"
    dangling.symlink_to(tmp_path / "models" / "new.pb")
    cg.save(model(3.0), dangling)
    assert dangling.is_symlink() and w_of(tmp_path / "models" / "new.pb") == 3.0


def test_an_existing_file_keeps_its_permissions_and_a_new_one_follows_the_umask(tmp_path):
    path = tmp_path / "private.pb"
    cg.save(model(), path)
    os.chmod(path, 0o600)
    cg.save(model(2.0), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and w_of(path) == 2.0
    os.chmod(path, 0o640)
    cg.render(model(), path.with_suffix(".dot"))
    cg.save(model(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    umask = os.umask(0o027)
    try:
        cg.save(model(), tmp_path / "new.pb")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new.pb").stat().st_mode) == 0o640


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root may give files away")
def test_an_existing_file_keeps_its_owner(tmp_path):
    path = tmp_path / "theirs.pb"
    cg.save(model(), path)
    os.chown(path, 4321, 4322)
    cg.save(model(2.0), path)
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (4321, 4322) and w_of(path) == 2.0


def test_a_device_or_pipe_is_written_to_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    cg.save(model(5.0), fifo)
    reader.join(10)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert cg.loads(got[0]).params["w"][0] == 5.0


# A child process that saves, says when it is writing, and then waits: to be killed, or told to go on.
SLOW_SAVE = textwrap.dedent("""
    import os, sys
    import cgraph.files as cfiles
    if sys.argv[2] == "named":
        del os.O_TMPFILE  # as on a filesystem (or system) without unnamed temporary files
    def write(f):
        f.write(b"x" * 2**20)
        f.flush()
        print("writing", flush=True)
        sys.stdin.readline()
        f.write(b"y")
    cfiles.replace_file(sys.argv[1], write)
    print("done", flush=True)
""")


def start_slow_save(path: Path, how: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(path), how], env=ENV, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "writing\n"
    return p


@pytest.mark.parametrize("how", ["unnamed", "named"])
def test_a_killed_save_leaves_nothing_to_clean(tmp_path, how):
    if how == "unnamed" and not (hasattr(os, "O_TMPFILE") and sys.platform.startswith("linux")):
        pytest.skip("O_TMPFILE is Linux's")
    path = tmp_path / "m.pb"
    cg.save(model(1.0), path)
    before = path.read_bytes()
    p = start_slow_save(path, how)
    p.kill()
    p.wait()
    assert path.read_bytes() == before
    left = sorted(f.name for f in tmp_path.iterdir())
    if how == "unnamed":
        assert left == ["m.pb"], "an unnamed temporary file vanishes with its process"
    else:
        assert len(left) == 2 and left[0].startswith(".m.pb.") and left[0].endswith(".cgraph.tmp")
        cg.save(model(2.0), tmp_path / "other.pb")  # the next save into the folder removes it
        assert sorted(f.name for f in tmp_path.iterdir()) == ["m.pb", "other.pb"]


def test_a_save_in_progress_keeps_its_temporary_file(tmp_path):
    path = tmp_path / "m.pb"
    p = start_slow_save(path, "named")
    try:
        temporary = [f for f in tmp_path.iterdir() if f.name.endswith(".cgraph.tmp")]
        assert len(temporary) == 1
        cg.save(model(), tmp_path / "other.pb")
        assert temporary[0].exists(), "a locked temporary file belongs to a live save"
    finally:
        out, _ = p.communicate("go on\n", timeout=60)
    assert out == "done\n" and p.returncode == 0
    assert path.read_bytes() == b"x" * 2**20 + b"y"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.pb", "other.pb"]


def test_errors_name_the_given_path_and_say_what_to_do(tmp_path):
    g = model()
    with pytest.raises(FileNotFoundError, match=r"cannot save to '': the path is empty"):
        cg.save(g, "")
    with pytest.raises(FileNotFoundError, match=r"cannot save to '.*nowhere/m.pb': the folder '.*nowhere' does not "
                                                r"exist; create it first"):
        cg.save(g, tmp_path / "nowhere" / "m.pb")
    with pytest.raises(IsADirectoryError, match=r"cannot save to '.*': it is a folder"):
        cg.save(g, tmp_path)
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(OSError, match=r"cannot save to '.*a': its symbolic links form a loop") as e:
        cg.save(g, tmp_path / "a")
    assert e.value.errno == errno.ELOOP
    (tmp_path / "a").unlink()
    (tmp_path / "b").unlink()
    path = tmp_path / "m.pb"
    link = tmp_path / "link.pb"
    link.symlink_to(path)
    cg.save(g, path)
    before = path.read_bytes()

    def full(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as e:
        cfiles.replace_file(link, full)
    assert e.value.errno == errno.ENOSPC
    assert str(e.value) == (f"[Errno {errno.ENOSPC}] cannot save to '{link}' (a link to '{path}'): no space left "
                            "on device; the disk is full: free some space or save elsewhere (any previous file "
                            "there is unchanged)")
    assert path.read_bytes() == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["link.pb", "m.pb"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_a_folder_without_write_permission(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=r"cannot save to '.*ro/m.pb': permission denied; choose a folder"):
            cg.save(model(), folder / "m.pb")
    finally:
        folder.chmod(0o700)
